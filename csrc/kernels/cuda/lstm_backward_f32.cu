// The LSTM backward kernels of lstm_backward.cuh for float32.
#define FRNN_ELEMENT float
#include "lstm_backward.cuh"
