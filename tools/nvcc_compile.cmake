# One nvcc compile of the CUDA compile check (CMakeLists.txt): runs
# ${NVCC} ${FLAGS} -c ${SRC} -o ${OBJ}, keeps everything nvcc and ptxas said in
# ${LOG} (tools/cuda_compile_check.sh reads the register and spill report from
# it), prints it, and fails on a non-zero exit.
get_filename_component(dir ${OBJ} DIRECTORY)
file(MAKE_DIRECTORY ${dir})
execute_process(
  COMMAND ${NVCC} ${FLAGS} -c ${SRC} -o ${OBJ}
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
file(WRITE ${LOG} "${out}")
message(NOTICE "${out}")
if(NOT rc EQUAL 0)
  file(REMOVE ${OBJ})
  message(FATAL_ERROR "nvcc failed (${rc}) on ${SRC}")
endif()
