// Launcher of the selection kernel; the only CUDA-compiled entry point of the plugin.
#pragma once

#include "select_core.h"

#include <cuda_runtime_api.h>

namespace edgeprune
{

// One block per image (per view): rows (batch, numRows, N) float32, similarity (batch, N)
// or nullptr, out (batch, keep + numExtra) int32. Returns the launch's CUDA error code.
cudaError_t launchSelect(SelectParams const& prm, int32_t batch, float const* rows, float const* similarity,
    int32_t* out, cudaStream_t stream);

} // namespace edgeprune
