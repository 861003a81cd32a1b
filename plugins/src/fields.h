// Plugin fields <-> SelectParams, and every check that can reject a node before it runs.
//
// Kept free of CUDA so the host test shim compiles the very same parsing and validation with
// g++ and checks its messages without a GPU or a TensorRT runtime.
#pragma once

#include "select_core.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace edgeprune
{

constexpr char const* kPluginName = "EdgePruneSelect";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "edgeprune";

// Largest grid whose scratch fits the 48 KiB of static shared memory every target offers.
constexpr int32_t kMaxPatches = 2048;

struct PluginConfig
{
    SelectParams prm{};
    // Parameters recorded as given (float32 as ONNX carries them); the kernel uses the
    // derived integers in `prm`, which exporter.pruning.PruneConfig computed in float64.
    float globalFraction = 0.F;
    float alpha = 0.F;
    float beta = 0.F;
    int32_t objectLayer = 0;
    int32_t deepLayer = 0;
    std::vector<int32_t> layers;
};

// Fills `cfg` from the fields; returns "" or a message that names the offending field.
std::string parseFields(nvinfer1::PluginFieldCollection const& fc, PluginConfig& cfg);

// Checks the input shapes against the fields (-1 = not known yet, skipped).
std::string checkInputs(PluginConfig const& cfg, int32_t nbInputs, int32_t const* ranks, int64_t const* dims);

// The fields to serialize; `storage` owns the arrays the PluginFields point into.
struct FieldStorage
{
    std::vector<nvinfer1::PluginField> fields;
    std::vector<int32_t> ints;
    std::vector<float> floats;
    nvinfer1::PluginFieldCollection collection{};
};
void buildFields(PluginConfig const& cfg, FieldStorage& storage);

// Field names and types the creator advertises (data = nullptr).
std::vector<nvinfer1::PluginField> fieldSchema();

// What TensorRT handed the creator when it deserialised an engine (TensorRTPhase::kRUNTIME):
// the fields read back from the plan, kept for the runtime to compare with config.json through
// the C functions edgeprune_runtime_fields_json / edgeprune_runtime_fields_clear.
void recordRuntimeFields(char const* layerName, PluginConfig const& cfg);

} // namespace edgeprune
