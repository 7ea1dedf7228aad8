// TensorRT plans behind the Graph interface (runtime/tensorrt_graph.py), compiled only with
// -DDIFFSEG_WITH_TENSORRT=ON where TensorRT and CUDA are found. NEVER RUN: no machine of this
// project has had a GPU with TensorRT (docs/cpp.md says what was checked).
//
// A plan runs only with the TensorRT version and GPU generation that built it, so the manifest
// lists every plan built for a graph and the one for this machine is chosen. An execution
// context is not thread-safe: each concurrent run takes its own from a pool, with its own stream.
#include "backends.hpp"
#include "diffseg/errors.hpp"

#ifndef DIFFSEG_WITH_TENSORRT

namespace diffseg {

std::unique_ptr<Graph> open_tensorrt_graph(const Manifest&, const GraphEntry&) {
    throw BackendError(
        "this build of the diffseg C++ library has no TensorRT backend; configure it with "
        "-DDIFFSEG_WITH_TENSORRT=ON on a machine with TensorRT and CUDA, or use backend 'openvino'");
}

}  // namespace diffseg

#else

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iterator>

#include "request_pool.hpp"

namespace diffseg {
namespace {

void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) throw BackendError(what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kERROR) last_error = message;
    }

   public:
    std::string last_error;
};

std::string tensorrt_version() {
    return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
           std::to_string(NV_TENSORRT_PATCH);
}

std::string compute_capability() {
    int device = 0;
    cudaDeviceProp properties{};
    check_cuda(cudaGetDevice(&device), "no CUDA GPU");
    check_cuda(cudaGetDeviceProperties(&properties, device), "no CUDA GPU");
    return std::to_string(properties.major) + "." + std::to_string(properties.minor);
}

// The plan built by this TensorRT version (major.minor.patch) for this GPU generation.
const TensorRTPlan& select_plan(const GraphEntry& entry, const std::string& version, const std::string& capability) {
    for (const auto& plan : entry.tensorrt_plans)
        if (plan.tensorrt.rfind(version, 0) == 0 && plan.compute_capability == capability) return plan;
    std::string built;
    for (const auto& plan : entry.tensorrt_plans)
        built += (built.empty() ? "" : ", ") + ("TensorRT " + plan.tensorrt + " / sm " + plan.compute_capability);
    throw EngineDirError(entry.spec.name + ": no TensorRT plan for TensorRT " + version +
                         " on a GPU of compute capability " + capability + " (built: " +
                         (built.empty() ? "none" : built) + "); build one on this machine: python -m "
                         "export.tensorrt_build DIR");
}

size_t element_size(const std::string& dtype) { return dtype == "uint8" ? 1 : 4; }

size_t byte_count(const std::string& dtype, const std::vector<int64_t>& shape) {
    size_t count = element_size(dtype);
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    return count;
}

nvinfer1::Dims dims_of(const std::vector<int64_t>& shape) {
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = shape[i];
    return dims;
}

// Device memory freed with its owner.
struct DeviceBuffer {
    void* pointer = nullptr;
    explicit DeviceBuffer(size_t bytes) { check_cuda(cudaMalloc(&pointer, bytes ? bytes : 1), "cudaMalloc"); }
    DeviceBuffer(DeviceBuffer&& other) noexcept : pointer(other.pointer) { other.pointer = nullptr; }
    DeviceBuffer(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (pointer) cudaFree(pointer);
    }
};

struct TensorRTResident : NamedResident {
    std::vector<DeviceBuffer> buffers;  // one per name, uploaded once
    std::vector<std::vector<int64_t>> shapes;
};

// One execution context with its own stream.
struct Context {
    std::shared_ptr<nvinfer1::IExecutionContext> context;
    std::shared_ptr<CUstream_st> stream;
};

class TensorRTGraph : public Graph {
   public:
    TensorRTGraph(const Manifest& manifest, const GraphEntry& entry)
        : Graph(entry.spec), contexts_([this] { return make_context(); }) {
        const TensorRTPlan& plan = select_plan(entry, tensorrt_version(), compute_capability());
        const std::string path = manifest.directory + "/" + plan.file;
        if (file_sha256(path) != plan.sha256)
            throw EngineDirError(path + " is missing or does not match its sha256 in manifest.json; rebuild it");
        std::ifstream in(path, std::ios::binary);
        const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw BackendError("TensorRT could not start: " + logger_.last_error);
        engine_.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
        if (!engine_) throw EngineDirError(path + " cannot be loaded by TensorRT (" + logger_.last_error + ")");
    }

   protected:
    std::shared_ptr<const Resident> place(const std::vector<TensorView>& arrays) const override {
        auto resident = std::make_shared<TensorRTResident>();
        for (const auto& array : arrays) {
            const size_t bytes = byte_count(array.dtype, array.shape);
            resident->names.push_back(array.name);
            resident->shapes.push_back(array.shape);
            resident->buffers.emplace_back(bytes);
            check_cuda(cudaMemcpy(resident->buffers.back().pointer, array.data, bytes, cudaMemcpyHostToDevice),
                       "uploading " + array.name);
        }
        return resident;
    }

    std::vector<HostTensor> infer(const std::vector<TensorView>& feed, const Resident* resident) const override {
        return contexts_.with_state([&](Context& slot) {
            nvinfer1::IExecutionContext& context = *slot.context;
            cudaStream_t stream = slot.stream.get();
            std::vector<DeviceBuffer> inputs;
            for (const auto& tensor : feed) {
                const size_t bytes = byte_count(tensor.dtype, tensor.shape);
                inputs.emplace_back(bytes);
                check_cuda(cudaMemcpyAsync(inputs.back().pointer, tensor.data, bytes, cudaMemcpyHostToDevice, stream),
                           "copying " + tensor.name);
                context.setInputShape(tensor.name.c_str(), dims_of(tensor.shape));
                context.setTensorAddress(tensor.name.c_str(), inputs.back().pointer);
            }
            if (const auto* placed = dynamic_cast<const TensorRTResident*>(resident)) {
                for (size_t i = 0; i < placed->names.size(); ++i) {
                    const auto& name = placed->names[i];
                    context.setInputShape(name.c_str(), dims_of(placed->shapes[i]));
                    context.setTensorAddress(name.c_str(), placed->buffers[i].pointer);
                }
            }
            std::vector<HostTensor> outputs;
            std::vector<DeviceBuffer> device_outputs;
            for (const auto& out : spec().outputs) {
                const nvinfer1::Dims dims = context.getTensorShape(out.name.c_str());
                HostTensor host{out.dtype, std::vector<int64_t>(dims.d, dims.d + dims.nbDims), {}};
                host.bytes.resize(byte_count(out.dtype, host.shape));
                device_outputs.emplace_back(host.bytes.size());
                context.setTensorAddress(out.name.c_str(), device_outputs.back().pointer);
                outputs.push_back(std::move(host));
            }
            if (!context.enqueueV3(stream)) throw BackendError(spec().name + ": TensorRT inference failed");
            for (size_t i = 0; i < outputs.size(); ++i)
                check_cuda(cudaMemcpyAsync(outputs[i].bytes.data(), device_outputs[i].pointer, outputs[i].bytes.size(),
                                           cudaMemcpyDeviceToHost, stream),
                           "copying " + spec().outputs[i].name);
            check_cuda(cudaStreamSynchronize(stream), spec().name);
            return outputs;
        });
    }

   private:
    Context make_context() const {
        Context slot;
        slot.context.reset(engine_->createExecutionContext());
        if (!slot.context) throw BackendError(spec().name + ": TensorRT could not make an execution context");
        cudaStream_t stream = nullptr;
        check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
        slot.stream.reset(stream, [](cudaStream_t s) { cudaStreamDestroy(s); });
        return slot;
    }

    mutable Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    mutable RequestPool<Context> contexts_;
};

}  // namespace

std::unique_ptr<Graph> open_tensorrt_graph(const Manifest& manifest, const GraphEntry& entry) {
    if (entry.tensorrt_plans.empty())
        throw EngineDirError(manifest.directory + " has no TensorRT plans for " + entry.spec.name +
                             "; build them on the GPU machine with python -m export.tensorrt_build " +
                             manifest.directory);
    return std::make_unique<TensorRTGraph>(manifest, entry);
}

}  // namespace diffseg

#endif
