// The LSTM backward kernels of lstm_backward.cuh for float64.
#define FRNN_ELEMENT double
#include "lstm_backward.cuh"
