// Runs the EdgePruneSelect kernel without TensorRT on cases written by scripts/gpu_check.py.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I plugins/src plugins/harness/select_harness.cu plugins/src/kernel.cu
//   g++  -O2 -std=c++17 -x c++ -I plugins/src plugins/harness/select_harness.cu      (host build, no GPU)
//
// The CUDA build launches launchSelect (the plugin's own launcher and kernel); the host build
// runs the same selectImage steps sequentially (BlockExec's host loop), so `--cpu-dry-run` of
// the GPU check exercises the file formats and the comparison on a machine without a GPU.
//
//   select_harness run  CASES OUT      every case once; OUT: per case int32 count + indices
//   select_harness time CASES REPS     per case: median and mean microseconds per launch (JSON lines;
//                                      the host build times its sequential loop instead)
//
// CASES (little endian): "EPSC", int32 version = 1, int32 cases; per case int32 params[11]
// (SelectParams in declaration order), int32 batch, int32 hasSimilarity, float32 rows
// [batch * numRows * N], then float32 similarity [batch * N] when hasSimilarity.
#include "select_core.h"

#if defined(__CUDACC__)
#include "kernel.h"
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace
{

struct Case
{
    edgeprune::SelectParams prm{};
    int32_t batch = 0;
    std::vector<float> rows;
    std::vector<float> similarity; // empty when the method takes none
};

[[noreturn]] void fail(std::string const& msg)
{
    std::fprintf(stderr, "select_harness: %s\n", msg.c_str());
    std::exit(1);
}

template <class T>
void readInto(std::FILE* f, T* dst, size_t count, char const* what)
{
    if (count > 0 && std::fread(dst, sizeof(T), count, f) != count)
    {
        fail(std::string("truncated case file while reading ") + what);
    }
}

std::vector<Case> readCases(char const* path)
{
    std::FILE* f = std::fopen(path, "rb");
    if (f == nullptr)
    {
        fail(std::string("cannot open ") + path);
    }
    char magic[4];
    int32_t version = 0;
    int32_t count = 0;
    readInto(f, magic, 4, "magic");
    readInto(f, &version, 1, "version");
    readInto(f, &count, 1, "case count");
    if (std::memcmp(magic, "EPSC", 4) != 0 || version != 1 || count < 0)
    {
        fail("not a version-1 EPSC case file");
    }
    std::vector<Case> cases(static_cast<size_t>(count));
    for (Case& c : cases)
    {
        int32_t p[11];
        int32_t hasSimilarity = 0;
        readInto(f, p, 11, "params");
        readInto(f, &c.batch, 1, "batch");
        readInto(f, &hasSimilarity, 1, "similarity flag");
        c.prm = edgeprune::SelectParams{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10]};
        int64_t const n = c.prm.numPatches();
        if (c.batch < 1 || n < 1 || n > 4096 || c.prm.numRows < 1 || c.prm.outputCount() > n)
        {
            fail("case with an invalid batch, grid, row count or output count");
        }
        c.rows.resize(static_cast<size_t>(c.batch * c.prm.numRows * n));
        readInto(f, c.rows.data(), c.rows.size(), "rows");
        if (hasSimilarity)
        {
            c.similarity.resize(static_cast<size_t>(c.batch * n));
            readInto(f, c.similarity.data(), c.similarity.size(), "similarity");
        }
    }
    std::fclose(f);
    return cases;
}

#if defined(__CUDACC__)
void check(cudaError_t err, char const* what)
{
    if (err != cudaSuccess)
    {
        fail(std::string(what) + ": " + cudaGetErrorString(err));
    }
}

struct DeviceCase
{
    float* rows = nullptr;
    float* similarity = nullptr;
    int32_t* out = nullptr;
    size_t outCount = 0;

    explicit DeviceCase(Case const& c)
    {
        outCount = static_cast<size_t>(c.batch) * c.prm.outputCount();
        check(cudaMalloc(&rows, c.rows.size() * sizeof(float)), "cudaMalloc rows");
        check(cudaMemcpy(rows, c.rows.data(), c.rows.size() * sizeof(float), cudaMemcpyHostToDevice), "copy rows");
        if (!c.similarity.empty())
        {
            check(cudaMalloc(&similarity, c.similarity.size() * sizeof(float)), "cudaMalloc similarity");
            check(cudaMemcpy(similarity, c.similarity.data(), c.similarity.size() * sizeof(float),
                      cudaMemcpyHostToDevice),
                "copy similarity");
        }
        check(cudaMalloc(&out, outCount * sizeof(int32_t)), "cudaMalloc out");
        check(cudaMemset(out, 0xff, outCount * sizeof(int32_t)), "poison out"); // -1: unwritten
    }
    ~DeviceCase()
    {
        cudaFree(rows);
        cudaFree(similarity);
        cudaFree(out);
    }
    void launch(Case const& c) const
    {
        check(edgeprune::launchSelect(c.prm, c.batch, rows, similarity, out, nullptr), "launchSelect");
    }
};

std::vector<int32_t> select(Case const& c)
{
    DeviceCase d(c);
    d.launch(c);
    check(cudaDeviceSynchronize(), "kernel");
    std::vector<int32_t> out(d.outCount);
    check(cudaMemcpy(out.data(), d.out, out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost), "copy out");
    return out;
}

void timeCase(Case const& c, int32_t reps, int32_t index)
{
    DeviceCase d(c);
    for (int32_t i = 0; i < 10; ++i)
    {
        d.launch(c); // warm-up
    }
    check(cudaDeviceSynchronize(), "warm-up");
    cudaEvent_t start;
    cudaEvent_t stop;
    check(cudaEventCreate(&start), "event");
    check(cudaEventCreate(&stop), "event");
    std::vector<float> each(static_cast<size_t>(reps));
    for (int32_t i = 0; i < reps; ++i)
    {
        check(cudaEventRecord(start), "record");
        d.launch(c);
        check(cudaEventRecord(stop), "record");
        check(cudaEventSynchronize(stop), "sync");
        check(cudaEventElapsedTime(&each[static_cast<size_t>(i)], start, stop), "elapsed");
    }
    check(cudaEventRecord(start), "record");
    for (int32_t i = 0; i < reps; ++i)
    {
        d.launch(c);
    }
    check(cudaEventRecord(stop), "record");
    check(cudaEventSynchronize(stop), "sync");
    float total = 0.F;
    check(cudaEventElapsedTime(&total, start, stop), "elapsed");
    std::sort(each.begin(), each.end());
    std::printf("{\"case\": %d, \"method\": %d, \"keep\": %d, \"batch\": %d, \"median_us\": %.3f, \"min_us\": %.3f, "
                "\"back_to_back_mean_us\": %.3f, \"reps\": %d}\n",
        index, c.prm.method, c.prm.keep, c.batch, 1000.0 * each[each.size() / 2], 1000.0 * each.front(),
        1000.0 * total / reps, reps);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
}
#else
std::vector<int32_t> select(Case const& c)
{
    int32_t const n = c.prm.numPatches();
    std::vector<unsigned char> scratch(static_cast<size_t>(edgeprune::scratchBytes(n)) + 16);
    edgeprune::Scratch const s = edgeprune::carveScratch(scratch.data(), n);
    std::vector<int32_t> out(static_cast<size_t>(c.batch) * c.prm.outputCount(), -1);
    for (int32_t b = 0; b < c.batch; ++b)
    {
        float const* sim = c.similarity.empty() ? nullptr : c.similarity.data() + static_cast<size_t>(b) * n;
        edgeprune::selectImage(edgeprune::BlockExec{}, c.prm, c.rows.data() + static_cast<size_t>(b) * c.prm.numRows * n,
            sim, s, out.data() + static_cast<size_t>(b) * c.prm.outputCount());
    }
    return out;
}

// Host build: wall-clock times of the sequential loop, so the dry run reads the same JSON lines.
void timeCase(Case const& c, int32_t reps, int32_t index)
{
    std::vector<double> each(static_cast<size_t>(reps));
    for (int32_t i = 0; i < reps; ++i)
    {
        auto const start = std::chrono::steady_clock::now();
        select(c);
        each[static_cast<size_t>(i)] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    }
    double total = 0.0;
    for (double t : each)
    {
        total += t;
    }
    std::sort(each.begin(), each.end());
    std::printf("{\"case\": %d, \"method\": %d, \"keep\": %d, \"batch\": %d, \"median_us\": %.3f, \"min_us\": %.3f, "
                "\"back_to_back_mean_us\": %.3f, \"reps\": %d, \"host\": true}\n",
        index, c.prm.method, c.prm.keep, c.batch, each[each.size() / 2], each.front(), total / reps, reps);
}
#endif

} // namespace

int main(int argc, char** argv)
{
    if (argc != 4)
    {
        fail("usage: select_harness run CASES OUT | select_harness time CASES REPS");
    }
    std::string const mode = argv[1];
    std::vector<Case> const cases = readCases(argv[2]);
    if (mode == "run")
    {
        std::FILE* out = std::fopen(argv[3], "wb");
        if (out == nullptr)
        {
            fail(std::string("cannot write ") + argv[3]);
        }
        for (Case const& c : cases)
        {
            std::vector<int32_t> const kept = select(c);
            int32_t const count = static_cast<int32_t>(kept.size());
            std::fwrite(&count, sizeof(int32_t), 1, out);
            std::fwrite(kept.data(), sizeof(int32_t), kept.size(), out);
        }
        std::fclose(out);
        return 0;
    }
    if (mode == "time")
    {
        int32_t const reps = std::max(1, std::atoi(argv[3]));
        for (size_t i = 0; i < cases.size(); ++i)
        {
            timeCase(cases[i], reps, static_cast<int32_t>(i));
        }
        return 0;
    }
    fail("unknown mode " + mode);
}
