// The LSTM forward kernels of lstm_forward.cuh for float32.
#define FRNN_ELEMENT float
#include "lstm_forward.cuh"
