// The LSTM backward kernels of lstm_backward.cuh for bfloat16.
#define FRNN_ELEMENT __nv_bfloat16
#include "lstm_backward.cuh"
