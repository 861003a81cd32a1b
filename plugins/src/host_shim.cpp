// C ABI over the host-compiled selection and field validation, loaded by the tests with ctypes.
// It runs exactly the parsing (fields.cpp) and per-patch steps (select_core.h) the plugin runs.
#include "fields.h"

#include <cstring>
#include <vector>

namespace
{

void copyMessage(std::string const& text, char* msg, int32_t msgLen)
{
    if (msg != nullptr && msgLen > 0)
    {
        std::strncpy(msg, text.c_str(), static_cast<size_t>(msgLen - 1));
        msg[msgLen - 1] = '\0';
    }
}

// types[i]: 0 = int32 array, 1 = float32 scalar; parsed exactly as the plugin's creator parses.
std::string parseArrays(int32_t nbFields, char const* const* names, int32_t const* types, void const* const* data,
    int32_t const* lengths, edgeprune::PluginConfig& cfg)
{
    std::vector<nvinfer1::PluginField> fields;
    for (int32_t i = 0; i < nbFields; ++i)
    {
        fields.emplace_back(names[i], data[i],
            types[i] == 1 ? nvinfer1::PluginFieldType::kFLOAT32 : nvinfer1::PluginFieldType::kINT32, lengths[i]);
    }
    nvinfer1::PluginFieldCollection fc{};
    fc.nbFields = nbFields;
    fc.fields = fields.data();
    return edgeprune::parseFields(fc, cfg);
}

} // namespace

// types[i]: 0 = int32 array, 1 = float32 scalar. Returns the output count per image (>= 0),
// or -1 with the error in msg. With batch == 0 only the fields and shapes are checked.
extern "C" __attribute__((visibility("default"))) int32_t edgeprune_host_select(int32_t nbFields,
    char const* const* names, int32_t const* types, void const* const* data, int32_t const* lengths, int32_t nbInputs,
    int32_t numRows, int32_t n, int32_t batch, float const* rows, float const* similarity, int32_t* out, char* msg,
    int32_t msgLen)
{
    edgeprune::PluginConfig cfg;
    std::string err = parseArrays(nbFields, names, types, data, lengths, cfg);
    if (err.empty())
    {
        int32_t const ranks[2] = {3, 2};
        int64_t dims[16] = {batch, numRows, n, -1, -1, -1, -1, -1, batch, n, -1, -1, -1, -1, -1, -1};
        err = edgeprune::checkInputs(cfg, nbInputs, ranks, dims);
    }
    if (!err.empty())
    {
        copyMessage(err, msg, msgLen);
        return -1;
    }
    edgeprune::SelectParams const& prm = cfg.prm;
    std::vector<unsigned char> scratch(static_cast<size_t>(edgeprune::scratchBytes(n)) + 16);
    edgeprune::Scratch const s = edgeprune::carveScratch(scratch.data(), n);
    for (int32_t b = 0; b < batch; ++b)
    {
        float const* imageSimilarity = similarity == nullptr ? nullptr : similarity + static_cast<int64_t>(b) * n;
        edgeprune::selectImage(edgeprune::BlockExec{}, prm, rows + static_cast<int64_t>(b) * numRows * n,
            imageSimilarity, s, out + static_cast<int64_t>(b) * prm.outputCount());
    }
    return prm.outputCount();
}

// What the plugin's creator does when TensorRT deserialises an engine (TensorRTPhase::kRUNTIME):
// parse the fields and record them for edgeprune_runtime_fields_json. Returns 0, or -1 with
// the error in msg.
extern "C" __attribute__((visibility("default"))) int32_t edgeprune_host_create_runtime(char const* layerName,
    int32_t nbFields, char const* const* names, int32_t const* types, void const* const* data,
    int32_t const* lengths, char* msg, int32_t msgLen)
{
    edgeprune::PluginConfig cfg;
    std::string const err = parseArrays(nbFields, names, types, data, lengths, cfg);
    if (!err.empty())
    {
        copyMessage(err, msg, msgLen);
        return -1;
    }
    edgeprune::recordRuntimeFields(layerName, cfg);
    return 0;
}
