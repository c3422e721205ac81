# One nvcc compile of the CUDA compile check (CMakeLists.txt): runs
# ${NVCC} ${FLAGS} -c ${SRC} -o ${OBJ}, keeps everything nvcc and ptxas said in
# ${LOG} (tools/cuda_compile_check.sh reads the register and spill report from
# it) and the PTX of each architecture beside it (<stem>.compute_<sm>.ptx, which
# it searches for loads the persistent kernels must not use), prints the log,
# and fails on a non-zero exit.
get_filename_component(dir ${OBJ} DIRECTORY)
get_filename_component(stem ${OBJ} NAME_WE)
set(keep ${dir}/keep-${stem})
file(REMOVE_RECURSE ${keep})
file(MAKE_DIRECTORY ${keep})
execute_process(
  COMMAND ${NVCC} ${FLAGS} -c ${SRC} -o ${OBJ} -keep -keep-dir ${keep}
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
file(GLOB ptx ${keep}/*.ptx)
foreach(p ${ptx})
  get_filename_component(name ${p} NAME)
  file(RENAME ${p} ${dir}/${name})
endforeach()
file(REMOVE_RECURSE ${keep})
file(WRITE ${LOG} "${out}")
message(NOTICE "${out}")
if(NOT rc EQUAL 0)
  file(REMOVE ${OBJ})
  message(FATAL_ERROR "nvcc failed (${rc}) on ${SRC}")
endif()
