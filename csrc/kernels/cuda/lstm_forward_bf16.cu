// The LSTM forward kernels of lstm_forward.cuh for bfloat16.
#define FRNN_ELEMENT __nv_bfloat16
#include "lstm_forward.cuh"
