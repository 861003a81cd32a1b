// Field parsing and validation (see fields.h for why this is CUDA-free).
#include "fields.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>

namespace edgeprune
{
namespace
{

using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

struct Seen
{
    bool method = false, keep = false, grid = false, regions = false, perRegionBudget = false, window = false,
         numAnchors = false, bufferEdges = false, numExtra = false, layers = false, objectLayer = false,
         deepLayer = false;
};

std::string typeError(PluginField const& f, char const* want)
{
    return std::string("field '") + f.name + "' must be " + want;
}

// ONNX int attributes arrive as kINT32; accept kINT64 too (Python-built collections).
bool readInts(PluginField const& f, std::vector<int32_t>& out)
{
    out.clear();
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    for (int32_t i = 0; i < f.length; ++i)
    {
        if (f.type == PluginFieldType::kINT32)
        {
            out.push_back(static_cast<int32_t const*>(f.data)[i]);
        }
        else if (f.type == PluginFieldType::kINT64)
        {
            int64_t const v = static_cast<int64_t const*>(f.data)[i];
            if (v < INT32_MIN || v > INT32_MAX)
            {
                return false;
            }
            out.push_back(static_cast<int32_t>(v));
        }
        else
        {
            return false;
        }
    }
    return true;
}

bool readFloat(PluginField const& f, float& out)
{
    if (f.data == nullptr || f.length != 1)
    {
        return false;
    }
    if (f.type == PluginFieldType::kFLOAT32)
    {
        out = *static_cast<float const*>(f.data);
        return true;
    }
    if (f.type == PluginFieldType::kFLOAT64)
    {
        out = static_cast<float>(*static_cast<double const*>(f.data));
        return true;
    }
    return false;
}

std::string range(char const* name, int64_t value, int64_t lo, int64_t hi, std::string const& why = "")
{
    if (value >= lo && value <= hi)
    {
        return "";
    }
    std::ostringstream os;
    os << "field '" << name << "' = " << value << " is out of range " << lo << ".." << hi;
    if (!why.empty())
    {
        os << " (" << why << ")";
    }
    return os.str();
}

// A derived count must agree with its float32 parameter up to that parameter's rounding.
std::string near(char const* name, int32_t value, double exact, double slack, char const* rule)
{
    if (std::fabs(static_cast<double>(value) - exact) <= slack + 1e-5 * (1.0 + std::fabs(exact)))
    {
        return "";
    }
    std::ostringstream os;
    os << "field '" << name << "' = " << value << " does not follow " << rule << " = " << exact;
    return os.str();
}

std::string validate(PluginConfig& cfg, Seen const& seen)
{
    SelectParams& p = cfg.prm;
    if (!seen.method)
    {
        return "field 'method' is missing";
    }
    if (p.method != kMethodHivtp && p.method != kMethodHiprune && p.method != kMethodHiprunePlus)
    {
        std::ostringstream os;
        os << "field 'method' = " << p.method << " is not a known method id (1 = hivtp, 2 = hiprune, 3 = hiprune++)";
        return os.str();
    }
    if (!seen.grid)
    {
        return "field 'grid' is missing";
    }
    std::string err = range("grid", p.gridRows, 1, kMaxPatches);
    if (err.empty())
    {
        err = range("grid", p.gridCols, 1, kMaxPatches);
    }
    if (err.empty() && static_cast<int64_t>(p.gridRows) * p.gridCols > kMaxPatches)
    {
        err = range("grid", static_cast<int64_t>(p.gridRows) * p.gridCols, 1, kMaxPatches, "rows * cols patches");
    }
    if (!err.empty())
    {
        return err;
    }
    int32_t const n = p.numPatches();
    if (!seen.keep)
    {
        return "field 'keep' is missing";
    }
    if (!(err = range("keep", p.keep, 1, n, "1..N patches of the grid")).empty())
    {
        return err;
    }
    if (p.method == kMethodHivtp)
    {
        if (!seen.regions || !seen.perRegionBudget || !seen.window || !seen.layers)
        {
            return "fields 'regions', 'per_region_budget', 'window' and 'layers' are required for hivtp";
        }
        if (!(err = range("regions", p.regions, 1, p.gridRows < p.gridCols ? p.gridRows : p.gridCols)).empty())
        {
            return err;
        }
        if (p.gridRows % p.regions || p.gridCols % p.regions)
        {
            return "field 'regions' must divide both grid sides";
        }
        int32_t const r2 = p.regions * p.regions;
        if (!(err = range("per_region_budget", p.perRegionBudget, 0, p.keep / r2, "keep / regions^2")).empty())
        {
            return err;
        }
        if (!(cfg.globalFraction >= 0.F && cfg.globalFraction <= 1.F))
        {
            return "field 'global_fraction' must lie in [0, 1]";
        }
        for (int32_t layer : cfg.layers)
        {
            if (layer < 0)
            {
                return "field 'layers' must hold 0-based layer indices (>= 0)";
            }
        }
        double const exact = static_cast<double>(cfg.globalFraction) * p.keep / r2;
        if (!(err = near("per_region_budget", p.perRegionBudget, std::floor(exact), 1.0, "floor(global_fraction * keep / regions^2)"))
                 .empty())
        {
            return err;
        }
        int32_t const rh = p.gridRows / p.regions;
        int32_t const rw = p.gridCols / p.regions;
        if (!(err = range("window", p.window, 1, rh < rw ? rh : rw)).empty())
        {
            return err;
        }
        if (rh % p.window || rw % p.window)
        {
            return "field 'window' must divide the region sides";
        }
        p.numRows = static_cast<int32_t>(cfg.layers.size());
        p.numAnchors = 0;
        p.numExtra = 0;
        return "";
    }
    if (!seen.numAnchors || !seen.bufferEdges || !seen.objectLayer || !seen.deepLayer)
    {
        return "fields 'num_anchors', 'buffer_edges', 'object_layer' and 'deep_layer' are required for hiprune";
    }
    if (!(err = range("buffer_edges", p.bufferEdges, 0, 1, "0 = clamp, 1 = discard")).empty())
    {
        return err;
    }
    if (!(err = range("num_anchors", p.numAnchors, 0, p.keep / 5, "anchors and buffers must fit in keep")).empty())
    {
        return err;
    }
    if (!(err = near("num_anchors", p.numAnchors, p.keep * static_cast<double>(cfg.alpha) / 5, 0.5, "round(keep * alpha / 5)"))
             .empty())
    {
        return err;
    }
    p.numRows = 2;
    if (p.method == kMethodHiprune)
    {
        p.numExtra = 0;
        return "";
    }
    if (!seen.numExtra)
    {
        return "field 'num_extra' is required for hiprune++";
    }
    if (!(err = range("num_extra", p.numExtra, 0, n - p.keep, "keep + num_extra must not exceed N")).empty())
    {
        return err;
    }
    return near("num_extra", p.numExtra, p.keep * static_cast<double>(cfg.beta) / 5, 0.5, "round(keep * beta / 5)");
}

} // namespace

std::string parseFields(nvinfer1::PluginFieldCollection const& fc, PluginConfig& cfg)
{
    cfg = PluginConfig{};
    Seen seen;
    std::vector<int32_t> ints;
    for (int32_t i = 0; i < fc.nbFields; ++i)
    {
        PluginField const& f = fc.fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        std::string const name = f.name;
        auto scalar = [&](int32_t& dst, bool& flag) -> std::string {
            if (!readInts(f, ints) || ints.size() != 1)
            {
                return typeError(f, "one integer");
            }
            dst = ints[0];
            flag = true;
            return "";
        };
        std::string err;
        if (name == "method") err = scalar(cfg.prm.method, seen.method);
        else if (name == "keep") err = scalar(cfg.prm.keep, seen.keep);
        else if (name == "regions") err = scalar(cfg.prm.regions, seen.regions);
        else if (name == "per_region_budget") err = scalar(cfg.prm.perRegionBudget, seen.perRegionBudget);
        else if (name == "window") err = scalar(cfg.prm.window, seen.window);
        else if (name == "num_anchors") err = scalar(cfg.prm.numAnchors, seen.numAnchors);
        else if (name == "buffer_edges") err = scalar(cfg.prm.bufferEdges, seen.bufferEdges);
        else if (name == "num_extra") err = scalar(cfg.prm.numExtra, seen.numExtra);
        else if (name == "object_layer") err = scalar(cfg.objectLayer, seen.objectLayer);
        else if (name == "deep_layer") err = scalar(cfg.deepLayer, seen.deepLayer);
        else if (name == "grid")
        {
            if (!readInts(f, ints) || ints.size() != 2)
            {
                err = typeError(f, "two integers (rows, cols)");
            }
            else
            {
                cfg.prm.gridRows = ints[0];
                cfg.prm.gridCols = ints[1];
                seen.grid = true;
            }
        }
        else if (name == "layers")
        {
            if (!readInts(f, cfg.layers))
            {
                err = typeError(f, "a non-empty list of integers");
            }
            seen.layers = true;
        }
        else if (name == "global_fraction" && !readFloat(f, cfg.globalFraction)) err = typeError(f, "one float");
        else if (name == "alpha" && !readFloat(f, cfg.alpha)) err = typeError(f, "one float");
        else if (name == "beta" && !readFloat(f, cfg.beta)) err = typeError(f, "one float");
        if (!err.empty())
        {
            return err;
        }
    }
    return validate(cfg, seen);
}

std::string checkInputs(PluginConfig const& cfg, int32_t nbInputs, int32_t const* ranks, int64_t const* dims)
{
    SelectParams const& p = cfg.prm;
    int32_t const want = p.method == kMethodHiprunePlus ? 2 : 1;
    std::ostringstream os;
    if (nbInputs != want)
    {
        os << "field 'method' = " << p.method << " takes " << want << " input(s), got " << nbInputs;
        return os.str();
    }
    if (ranks[0] != 3)
    {
        os << "input 0 (layer rows) must be (B, rows, N), got rank " << ranks[0];
        return os.str();
    }
    int64_t const rows = dims[1];
    int64_t const len = dims[2];
    if (len >= 0 && len != p.numPatches())
    {
        os << "field 'grid' = " << p.gridRows << "x" << p.gridCols << " (" << p.numPatches()
           << " patches) does not match the input length " << len;
        return os.str();
    }
    if (rows >= 0 && rows != p.numRows)
    {
        os << "field '" << (p.method == kMethodHivtp ? "layers" : "method") << "' needs " << p.numRows
           << " layer rows, the input has " << rows;
        return os.str();
    }
    if (nbInputs == 2)
    {
        int64_t const simLen = dims[8 + 1];
        if (ranks[1] != 2 || (simLen >= 0 && simLen != p.numPatches()))
        {
            os << "field 'grid' = " << p.gridRows << "x" << p.gridCols
               << ": input 1 (similarity) must be (B, " << p.numPatches() << ")";
            return os.str();
        }
    }
    return "";
}

void buildFields(PluginConfig const& cfg, FieldStorage& st)
{
    SelectParams const& p = cfg.prm;
    st.fields.clear();
    st.ints.clear();
    st.floats.clear();
    // Reserve first: the fields point into these vectors.
    st.ints.reserve(16 + cfg.layers.size());
    st.floats.reserve(4);
    std::vector<std::pair<char const*, std::vector<int32_t>>> ints = {
        {"method", {p.method}}, {"keep", {p.keep}}, {"grid", {p.gridRows, p.gridCols}}};
    std::vector<std::pair<char const*, float>> floats;
    if (p.method == kMethodHivtp)
    {
        ints.push_back({"regions", {p.regions}});
        ints.push_back({"layers", cfg.layers});
        ints.push_back({"per_region_budget", {p.perRegionBudget}});
        ints.push_back({"window", {p.window}});
        floats.push_back({"global_fraction", cfg.globalFraction});
    }
    else
    {
        ints.push_back({"object_layer", {cfg.objectLayer}});
        ints.push_back({"deep_layer", {cfg.deepLayer}});
        ints.push_back({"buffer_edges", {p.bufferEdges}});
        ints.push_back({"num_anchors", {p.numAnchors}});
        floats.push_back({"alpha", cfg.alpha});
        if (p.method == kMethodHiprunePlus)
        {
            ints.push_back({"num_extra", {p.numExtra}});
            floats.push_back({"beta", cfg.beta});
        }
    }
    for (auto const& item : ints)
    {
        size_t const start = st.ints.size();
        st.ints.insert(st.ints.end(), item.second.begin(), item.second.end());
        st.fields.emplace_back(item.first, st.ints.data() + start, PluginFieldType::kINT32,
            static_cast<int32_t>(item.second.size()));
    }
    for (auto const& item : floats)
    {
        st.floats.push_back(item.second);
        st.fields.emplace_back(item.first, &st.floats.back(), PluginFieldType::kFLOAT32, 1);
    }
    st.collection.nbFields = static_cast<int32_t>(st.fields.size());
    st.collection.fields = st.fields.data();
}

std::vector<nvinfer1::PluginField> fieldSchema()
{
    using T = PluginFieldType;
    return {{"method", nullptr, T::kINT32, 1}, {"keep", nullptr, T::kINT32, 1}, {"grid", nullptr, T::kINT32, 2},
        {"regions", nullptr, T::kINT32, 1}, {"global_fraction", nullptr, T::kFLOAT32, 1},
        {"layers", nullptr, T::kINT32, 0}, {"per_region_budget", nullptr, T::kINT32, 1},
        {"window", nullptr, T::kINT32, 1}, {"alpha", nullptr, T::kFLOAT32, 1},
        {"object_layer", nullptr, T::kINT32, 1}, {"deep_layer", nullptr, T::kINT32, 1},
        {"buffer_edges", nullptr, T::kINT32, 1}, {"num_anchors", nullptr, T::kINT32, 1},
        {"beta", nullptr, T::kFLOAT32, 1}, {"num_extra", nullptr, T::kINT32, 1}};
}

namespace
{

std::mutex gRuntimeMutex;
std::vector<std::string> gRuntimeRecords; // one JSON object per plugin created at kRUNTIME

std::string jsonString(char const* text)
{
    std::string out = "\"";
    for (char const* c = text; c != nullptr && *c != '\0'; ++c)
    {
        if (*c == '"' || *c == '\\')
        {
            out += '\\';
            out += *c;
        }
        else if (static_cast<unsigned char>(*c) < 0x20)
        {
            out += ' ';
        }
        else
        {
            out += *c;
        }
    }
    return out + "\"";
}

} // namespace

void recordRuntimeFields(char const* layerName, PluginConfig const& cfg)
{
    FieldStorage st;
    buildFields(cfg, st);
    std::string json = "{\"layer\": " + jsonString(layerName) + ", \"fields\": {";
    for (size_t i = 0; i < st.fields.size(); ++i)
    {
        PluginField const& f = st.fields[i];
        json += (i == 0 ? "" : ", ") + jsonString(f.name) + ": [";
        for (int32_t j = 0; j < f.length; ++j)
        {
            char number[32];
            if (f.type == PluginFieldType::kFLOAT32)
            {
                double const v = static_cast<double>(static_cast<float const*>(f.data)[j]);
                if (std::isfinite(v))
                {
                    std::snprintf(number, sizeof(number), "%.9g", v);
                }
                else // spelled as Python's json module reads them
                {
                    std::snprintf(number, sizeof(number), "%s", std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
                }
            }
            else
            {
                std::snprintf(number, sizeof(number), "%d", static_cast<int>(static_cast<int32_t const*>(f.data)[j]));
            }
            json += (j == 0 ? "" : ", ") + std::string(number);
        }
        json += "]";
    }
    json += "}}";
    std::lock_guard<std::mutex> lock(gRuntimeMutex);
    gRuntimeRecords.push_back(std::move(json));
}

} // namespace edgeprune

// JSON array of the plugins TensorRT created while deserialising engines in this process, in
// creation order: [{"layer": name, "fields": {name: [values]}}]. The pointer stays valid until
// the next call from the same thread.
extern "C" __attribute__((visibility("default"))) char const* edgeprune_runtime_fields_json()
{
    thread_local std::string out;
    std::lock_guard<std::mutex> lock(edgeprune::gRuntimeMutex);
    out = "[";
    for (size_t i = 0; i < edgeprune::gRuntimeRecords.size(); ++i)
    {
        out += (i == 0 ? "" : ", ") + edgeprune::gRuntimeRecords[i];
    }
    out += "]";
    return out.c_str();
}

extern "C" __attribute__((visibility("default"))) void edgeprune_runtime_fields_clear()
{
    std::lock_guard<std::mutex> lock(edgeprune::gRuntimeMutex);
    edgeprune::gRuntimeRecords.clear();
}
