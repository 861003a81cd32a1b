// Per-token selection logic shared by the CUDA kernel and the host test shim.
//
// Every step is "for each patch p, compute something from shared arrays", separated by
// barriers. `BlockExec` runs the per-patch loop over the threads of one CUDA block on the
// device and as a plain loop on the host, so the host-compiled test exercises exactly the
// sequence of steps the kernel runs. The arithmetic mirrors exporter/pruning/vectorized.py:
// integer priorities `tier * (N + 1) + key` with `key = N - rank` (ties: lower index wins),
// so no two priorities are equal and the result cannot depend on thread scheduling.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EP_HD __host__ __device__
#else
#define EP_HD
#endif

namespace edgeprune
{

enum Method : int32_t
{
    kMethodHivtp = 1,
    kMethodHiprune = 2,
    kMethodHiprunePlus = 3,
};

enum BufferEdges : int32_t
{
    kBufferClamp = 0,
    kBufferDiscard = 1,
};

// Everything the kernel needs, already reduced to integers. The derived counts come from the
// plugin fields (computed once by exporter.pruning.PruneConfig), see plugin_fields.h.
struct SelectParams
{
    int32_t method;
    int32_t keep;
    int32_t gridRows;
    int32_t gridCols;
    int32_t numRows;         // layer rows per image in the input (B, numRows, N)
    int32_t regions;         // hivtp
    int32_t perRegionBudget; // hivtp
    int32_t window;          // hivtp
    int32_t numAnchors;      // hiprune
    int32_t bufferEdges;     // hiprune
    int32_t numExtra;        // hiprune++

    EP_HD int32_t numPatches() const { return gridRows * gridCols; }
    EP_HD int32_t outputCount() const { return keep + numExtra; }
};

// Per-image scratch; on the device it lives in shared memory.
struct Scratch
{
    float* value;   // N
    int32_t* key;   // N
    int32_t* aux;   // N
    int32_t* prio;  // N
    uint8_t* flag;  // N
};

// Bytes of scratch for N patches; the arrays are carved in this order (4-byte ones first).
EP_HD inline int64_t scratchBytes(int32_t n)
{
    return static_cast<int64_t>(n) * (4 + 4 + 4 + 4 + 1);
}

EP_HD inline Scratch carveScratch(void* base, int32_t n)
{
    Scratch s;
    s.value = static_cast<float*>(base);
    s.key = reinterpret_cast<int32_t*>(s.value + n);
    s.aux = s.key + n;
    s.prio = s.aux + n;
    s.flag = reinterpret_cast<uint8_t*>(s.prio + n);
    return s;
}

// Runs a per-patch body over the threads of the current block (device) or sequentially (host).
struct BlockExec
{
    template <class F>
    EP_HD void each(int32_t n, F const& body) const
    {
#if defined(__CUDA_ARCH__)
        for (int32_t p = static_cast<int32_t>(threadIdx.x); p < n; p += static_cast<int32_t>(blockDim.x))
        {
            body(p);
        }
#else
        for (int32_t p = 0; p < n; ++p)
        {
            body(p);
        }
#endif
    }

    EP_HD void sync() const
    {
#if defined(__CUDA_ARCH__)
        __syncthreads();
#endif
    }
};

// q outranks p: higher value, or equal value and lower index (the project's tie rule).
template <class T>
EP_HD inline bool outranks(T vq, int32_t q, T vp, int32_t p)
{
    return vq > vp || (vq == vp && q < p);
}

// Number of patches that outrank p over the whole grid.
template <class T>
EP_HD inline int32_t rankAll(T const* v, int32_t n, int32_t p)
{
    T const vp = v[p];
    int32_t count = 0;
    for (int32_t q = 0; q < n; ++q)
    {
        count += outranks(v[q], q, vp, p) ? 1 : 0;
    }
    return count;
}

// Number of patches in p's bh x bw block of the grid that outrank p.
template <class T>
EP_HD inline int32_t rankInBlock(T const* v, int32_t cols, int32_t bh, int32_t bw, int32_t p)
{
    int32_t const r0 = (p / cols) / bh * bh;
    int32_t const c0 = (p % cols) / bw * bw;
    T const vp = v[p];
    int32_t count = 0;
    for (int32_t r = r0; r < r0 + bh; ++r)
    {
        for (int32_t c = c0; c < c0 + bw; ++c)
        {
            int32_t const q = r * cols + c;
            count += outranks(v[q], q, vp, p) ? 1 : 0;
        }
    }
    return count;
}

// Number of entries strictly greater than v[p] (the values are distinct by construction).
EP_HD inline int32_t countGreater(int32_t const* v, int32_t n, int32_t p)
{
    int32_t const vp = v[p];
    int32_t count = 0;
    for (int32_t q = 0; q < n; ++q)
    {
        count += v[q] > vp ? 1 : 0;
    }
    return count;
}

// HiPrune anchors and buffers (PRUNING.md 4.2); `anchor` holds 0/1 per patch.
EP_HD inline bool inAnchorsOrBuffers(SelectParams const& prm, uint8_t const* anchor, int32_t p)
{
    int32_t const n = prm.numPatches();
    int32_t const w = prm.gridCols;
    bool const clamp = prm.bufferEdges == kBufferClamp;
    if (anchor[p])
    {
        return true;
    }
    // p is the right neighbour of p-1 (not across a row end unless clamping wraps)
    if (p >= 1 && anchor[p - 1] && (clamp || (p - 1) % w != w - 1))
    {
        return true;
    }
    // p is the left neighbour of p+1
    if (p + 1 < n && anchor[p + 1] && (clamp || (p + 1) % w != 0))
    {
        return true;
    }
    if ((p >= w && anchor[p - w]) || (p + w < n && anchor[p + w]))
    {
        return true;
    }
    if (clamp && (p == 0 || p == n - 1))
    {
        // a - W below 0 clamps to patch 0; a + W past the end clamps to patch N-1
        int32_t const first = p == 0 ? 0 : n - w;
        for (int32_t c = 0; c < w; ++c)
        {
            if (anchor[first + c])
            {
                return true;
            }
        }
    }
    return false;
}

// Selects one image's kept patch indices into out[0 .. outputCount), ascending.
// rows: (numRows, N) float32 layer scores; similarity: N values for hiprune++, else unused.
template <class Exec>
EP_HD void selectImage(Exec const& ex, SelectParams const& prm, float const* rows, float const* similarity,
    Scratch const& s, int32_t* out)
{
    int32_t const n = prm.numPatches();
    int32_t const tierStep = n + 1;

    if (prm.method == kMethodHivtp)
    {
        // importance = float32 sum of the rows in layer order (not the mean: no division rounding)
        ex.each(n, [&](int32_t p) {
            float total = rows[p];
            for (int32_t l = 1; l < prm.numRows; ++l)
            {
                total = total + rows[static_cast<int64_t>(l) * n + p];
            }
            s.value[p] = total;
        });
        ex.sync();
        int32_t const rh = prm.gridRows / prm.regions;
        int32_t const rw = prm.gridCols / prm.regions;
        ex.each(n, [&](int32_t p) {
            s.key[p] = n - rankAll(s.value, n, p);
            bool const global = rankInBlock(s.value, prm.gridCols, rh, rw, p) < prm.perRegionBudget;
            s.flag[p] = global ? 1 : 0;
            s.aux[p] = global ? 0 : s.key[p];
        });
        ex.sync();
        ex.each(n, [&](int32_t p) {
            bool const global = s.flag[p] != 0;
            bool const candidate = !global && rankInBlock(s.aux, prm.gridCols, prm.window, prm.window, p) == 0;
            int32_t const tier = global ? 3 : (candidate ? 2 : 1);
            s.prio[p] = tier * tierStep + s.key[p];
        });
    }
    else
    {
        float const* objectScore = rows;
        float const* deepScore = rows + n;
        ex.each(n, [&](int32_t p) { s.flag[p] = rankAll(objectScore, n, p) < prm.numAnchors ? 1 : 0; });
        ex.sync();
        ex.each(n, [&](int32_t p) {
            int32_t const tier = inAnchorsOrBuffers(prm, s.flag, p) ? 2 : 1;
            s.prio[p] = tier * tierStep + (n - rankAll(deepScore, n, p));
        });
    }
    ex.sync();

    // Top-K of distinct priorities; hiprune++ prepares its prompt keys in the same pass.
    bool const extra = prm.numExtra > 0;
    ex.each(n, [&](int32_t p) {
        bool const kept = countGreater(s.prio, n, p) < prm.keep;
        s.flag[p] = kept ? 1 : 0;
        if (extra)
        {
            s.aux[p] = kept ? 0 : n - rankAll(similarity, n, p);
        }
    });
    ex.sync();
    if (extra)
    {
        ex.each(n, [&](int32_t p) {
            if (!s.flag[p] && countGreater(s.aux, n, p) < prm.numExtra)
            {
                s.flag[p] = 1;
            }
        });
        ex.sync();
    }

    // Slot = number of kept patches before p, so the output is sorted by index.
    ex.each(n, [&](int32_t p) {
        if (s.flag[p])
        {
            int32_t slot = 0;
            for (int32_t q = 0; q < p; ++q)
            {
                slot += s.flag[q];
            }
            out[slot] = p;
        }
    });
}

} // namespace edgeprune
