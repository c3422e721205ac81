// The LSTM backward kernels of lstm_backward.cuh for float16.
#define FRNN_ELEMENT __half
#include "lstm_backward.cuh"
