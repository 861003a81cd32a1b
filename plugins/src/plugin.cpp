// EdgePruneSelect: TensorRT IPluginV3 (V3One core/build/runtime) wrapping the selection kernel.
//
// Only interfaces present in TensorRT 10.3 are implemented (no IPluginV3OneBuildV2, no
// getMetadataString), so one source builds for JetPack 6.1/6.2 and for newer releases.
#include "fields.h"
#include "kernel.h"

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

using namespace nvinfer1;

namespace edgeprune
{
namespace
{

ILoggerFinder* gLoggerFinder = nullptr;

void log(ILogger::Severity severity, std::string const& message)
{
    std::string const text = std::string(kPluginName) + ": " + message;
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(severity, text.c_str());
    }
    else if (severity <= ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}

void logError(std::string const& message)
{
    log(ILogger::Severity::kERROR, message);
}

class SelectPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime
{
public:
    explicit SelectPlugin(PluginConfig cfg)
        : mCfg(std::move(cfg))
    {
        buildFields(mCfg, mFields);
    }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        try
        {
            return new SelectPlugin(mCfg);
        }
        catch (...)
        {
            return nullptr;
        }
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept override
    {
        if (nbOutputs != 1)
        {
            return -1;
        }
        outputTypes[0] = DataType::kINT32;
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override
    {
        int32_t ranks[2] = {0, 0};
        int64_t dims[16];
        for (int32_t i = 0; i < 16; ++i)
        {
            dims[i] = -1;
        }
        for (int32_t i = 0; i < nbInputs && i < 2; ++i)
        {
            ranks[i] = inputs[i].nbDims;
            for (int32_t d = 0; d < inputs[i].nbDims && d < 8; ++d)
            {
                if (inputs[i].d[d]->isConstant())
                {
                    dims[i * 8 + d] = inputs[i].d[d]->getConstantValue();
                }
            }
        }
        if (!reportShapeError(nbInputs, ranks, dims) || nbOutputs != 1)
        {
            return -1;
        }
        outputs[0].nbDims = 2;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = exprBuilder.constant(mCfg.prm.outputCount());
        return 0;
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t /*nbOutputs*/) noexcept override
    {
        PluginTensorDesc const& desc = inOut[pos].desc;
        DataType const want = pos < nbInputs ? DataType::kFLOAT : DataType::kINT32;
        return desc.type == want && desc.format == TensorFormat::kLINEAR;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
        int32_t /*nbOutputs*/) noexcept override
    {
        int32_t ranks[2] = {0, 0};
        int64_t dims[16];
        for (int32_t i = 0; i < 16; ++i)
        {
            dims[i] = -1;
        }
        for (int32_t i = 0; i < nbInputs && i < 2; ++i)
        {
            ranks[i] = in[i].desc.dims.nbDims;
            for (int32_t d = 0; d < ranks[i] && d < 8; ++d)
            {
                dims[i * 8 + d] = in[i].desc.dims.d[d];
            }
        }
        return reportShapeError(nbInputs, ranks, dims) ? 0 : -1;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* /*in*/, int32_t /*nbInputs*/, PluginTensorDesc const* /*out*/,
        int32_t /*nbOutputs*/) noexcept override
    {
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override
    {
        auto const batch = static_cast<int32_t>(inputDesc[0].dims.d[0]);
        float const* similarity
            = mCfg.prm.method == kMethodHiprunePlus ? static_cast<float const*>(inputs[1]) : nullptr;
        cudaError_t const status = launchSelect(mCfg.prm, batch, static_cast<float const*>(inputs[0]), similarity,
            static_cast<int32_t*>(outputs[0]), stream);
        if (status != cudaSuccess)
        {
            logError(std::string("kernel launch failed: ") + cudaGetErrorString(status));
            return -1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mFields.collection; }

private:
    bool reportShapeError(int32_t nbInputs, int32_t const* ranks, int64_t const* dims) const
    {
        std::string const err = checkInputs(mCfg, nbInputs, ranks, dims);
        if (!err.empty())
        {
            logError(err);
            return false;
        }
        return true;
    }

    PluginConfig mCfg;
    FieldStorage mFields;
};

class SelectCreator final : public IPluginCreatorV3One
{
public:
    SelectCreator()
        : mSchema(fieldSchema())
    {
        mCollection.nbFields = static_cast<int32_t>(mSchema.size());
        mCollection.fields = mSchema.data();
    }

    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept override
    {
        try
        {
            PluginConfig cfg;
            std::string const err = fc == nullptr ? std::string("no fields given") : parseFields(*fc, cfg);
            if (!err.empty())
            {
                logError(std::string("node '") + (name != nullptr ? name : "") + "': " + err);
                return nullptr;
            }
            if (phase == TensorRTPhase::kRUNTIME)
            {
                recordRuntimeFields(name != nullptr ? name : "", cfg); // read back by the runtime
            }
            return new SelectPlugin(std::move(cfg));
        }
        catch (...)
        {
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<PluginField> mSchema;
    PluginFieldCollection mCollection{};
};

// Which TensorRT API generation loaded us: the caller of getCreators lives in the TensorRT
// library, so its getInferLibVersion tells. TensorRT-RTX 1.x implements the 10.x API.
// EDGEPRUNE_PLUGIN_ASSUME_RUNTIME=<major> overrides the detection (tests of the refusal path).
int32_t runtimeApiMajor(void* caller, std::string& library)
{
    if (char const* forced = std::getenv("EDGEPRUNE_PLUGIN_ASSUME_RUNTIME"))
    {
        library = "forced by EDGEPRUNE_PLUGIN_ASSUME_RUNTIME";
        return std::atoi(forced);
    }
    Dl_info info{};
    if (dladdr(caller, &info) == 0 || info.dli_fname == nullptr)
    {
        return -1;
    }
    library = info.dli_fname;
    if (library.find("tensorrt_rtx") != std::string::npos)
    {
        return 10;
    }
    void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr)
    {
        return -1;
    }
    using VersionFn = int32_t (*)();
    auto fn = reinterpret_cast<VersionFn>(dlsym(handle, "getInferLibVersion"));
    int32_t const version = fn != nullptr ? fn() : -1;
    dlclose(handle);
    if (version < 0)
    {
        return -1;
    }
    return version >= 10000 ? version / 10000 : version / 1000; // 10.x: MMmmpp; 8.x: Mmmpp
}

} // namespace
} // namespace edgeprune

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    edgeprune::gLoggerFinder = finder;
}

extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static edgeprune::SelectCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    std::string library;
    int32_t const major = edgeprune::runtimeApiMajor(__builtin_return_address(0), library);
    if (major >= 0 && major != NV_TENSORRT_MAJOR)
    {
        edgeprune::logError("this library was built against TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "."
            + std::to_string(NV_TENSORRT_MINOR) + " headers but is loaded by TensorRT " + std::to_string(major)
            + ".x (" + library + "); rebuild it with `python -m plugins build --tensorrt-include <TensorRT "
            + std::to_string(major) + " include dir>`");
        nbCreators = 0;
        return nullptr;
    }
    nbCreators = 1;
    return creators;
}

// Build facts for `python -m plugins`: "<name> <version> <namespace> <TensorRT headers version>".
extern "C" __attribute__((visibility("default"))) char const* edgepruneBuildInfo()
{
    static std::string const info = std::string(edgeprune::kPluginName) + " " + edgeprune::kPluginVersion + " "
        + edgeprune::kPluginNamespace + " " + std::to_string(NV_TENSORRT_MAJOR) + "."
        + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH);
    return info.c_str();
}
