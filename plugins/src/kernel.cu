// The selection kernel: one block per image, scratch in dynamic shared memory, no host
// round-trip and no allocation. The per-patch logic is select_core.h, shared with the host.
#include "kernel.h"

namespace edgeprune
{
namespace
{

constexpr int32_t kThreads = 256;

__global__ void __launch_bounds__(kThreads) selectKernel(
    SelectParams prm, float const* rows, float const* similarity, int32_t* out)
{
    extern __shared__ float4 sharedBase[]; // float4: 16-byte alignment for the carved arrays
    int32_t const n = prm.numPatches();
    int64_t const image = blockIdx.x;
    Scratch const s = carveScratch(sharedBase, n);
    float const* imageSimilarity = similarity == nullptr ? nullptr : similarity + image * n;
    selectImage(BlockExec{}, prm, rows + image * prm.numRows * n, imageSimilarity, s,
        out + image * prm.outputCount());
}

} // namespace

cudaError_t launchSelect(SelectParams const& prm, int32_t batch, float const* rows, float const* similarity,
    int32_t* out, cudaStream_t stream)
{
    if (batch <= 0)
    {
        return cudaSuccess;
    }
    size_t const shared = static_cast<size_t>(scratchBytes(prm.numPatches()));
    selectKernel<<<batch, kThreads, shared, stream>>>(prm, rows, similarity, out);
    return cudaGetLastError();
}

} // namespace edgeprune
