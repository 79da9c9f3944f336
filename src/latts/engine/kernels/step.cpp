#include <torch/extension.h>

void register_step(pybind11::module& module) {}
