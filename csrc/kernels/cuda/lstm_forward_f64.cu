// The LSTM forward kernels of lstm_forward.cuh for float64.
#define FRNN_ELEMENT double
#include "lstm_forward.cuh"
