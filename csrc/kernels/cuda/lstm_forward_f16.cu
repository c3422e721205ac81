// The LSTM forward kernels of lstm_forward.cuh for float16.
#define FRNN_ELEMENT __half
#include "lstm_forward.cuh"
