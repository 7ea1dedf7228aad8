// OpenVINO's CPU plugin behind the Graph interface, compiled from the same .onnx file and with
// the same properties as the Python runtime (runtime/openvino_graph.py), so that both give the
// same outputs. Infer requests are not thread-safe: each concurrent run takes its own.
#include <openvino/openvino.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>

#include "backends.hpp"
#include "diffseg/errors.hpp"
#include "request_pool.hpp"

namespace diffseg {
namespace {

// OpenVINO caches the kernels it prepares per input shape; a bound keeps memory flat over many
// query sizes (the Python runtime's OPENVINO_SHAPE_CACHE).
constexpr int kShapeCache = 64;

ov::Core& core() {
    static ov::Core instance = [] {
        // oneDNN's own primitive cache, below the shape cache, is bounded alike: unbounded it grew
        // a process by about 0.35 MB per new query size (runtime/openvino_graph.py). oneDNN reads
        // the variable when the plugin first builds a primitive; a value the user set is kept.
        setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", std::to_string(kShapeCache).c_str(), 0);
        return ov::Core();
    }();  // thread-safe to share; made once
    return instance;
}

ov::element::Type element_type(const std::string& dtype) {
    if (dtype == "uint8") return ov::element::u8;
    if (dtype == "float32") return ov::element::f32;
    throw BackendError("the openvino backend does not feed " + dtype + " tensors");
}

ov::Tensor wrap(const TensorView& view) {
    // No copy: the caller's array outlives the call (a feed) or the Resident (a bank).
    return ov::Tensor(element_type(view.dtype), ov::Shape(view.shape.begin(), view.shape.end()),
                      const_cast<void*>(view.data));
}

struct OpenVinoResident : NamedResident {
    std::vector<ov::Tensor> tensors;
};

std::string first_line(const std::string& text) {
    const auto start = text.find_first_not_of(" \n\t");
    if (start == std::string::npos) return "";
    const std::string line = text.substr(start, text.find('\n', start) - start);
    return line.substr(0, 300);
}

class OpenVinoGraph : public Graph {
   public:
    OpenVinoGraph(const std::string& path, const GraphSpec& spec, bool bf16, int threads)
        : Graph(spec), requests_([this] { return compiled_.create_infer_request(); }) {
        if (bf16 && !cpu_has_bf16())
            throw BackendError(
                "backend 'openvino-bf16' needs a CPU with AVX512-BF16 or AMX, which this one lacks; use 'openvino'");
        std::shared_ptr<ov::Model> model;
        try {
            model = core().read_model(path);
        } catch (const ov::Exception& err) {
            throw EngineDirError(path + " cannot be loaded by OpenVINO (" + first_line(err.what()) +
                                 "): the file is damaged or not an ONNX graph; rebuild the engines (opening with "
                                 "verify=True checks every file's sha256 first)");
        }
        std::vector<std::string> names;
        for (const auto& port : model->inputs()) names.push_back(port.get_any_name());
        if (names != spec.input_names())
            throw InputError(path + ": graph inputs " + python_list(names) + " do not match the manifest's " +
                             python_list(spec.input_names()));
        // The Python runtime's properties (openvino_config), typed as the plugin reads them.
        ov::AnyMap config{ov::hint::inference_precision(bf16 ? ov::element::bf16 : ov::element::f32),
                          ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                          {"CPU_RUNTIME_CACHE_CAPACITY", kShapeCache}};
        if (bf16) config["SNIPPETS_MODE"] = std::string("DISABLE");  // bf16 snippets are not repeatable on several threads
        if (threads > 0) config.insert(ov::inference_num_threads(threads));
        try {
            compiled_ = core().compile_model(model, "CPU", config);
        } catch (const ov::Exception& err) {
            throw BackendError("OpenVINO could not compile " + path + " (" + first_line(err.what()) + ")");
        }
    }

   protected:
    std::shared_ptr<const Resident> place(const std::vector<TensorView>& arrays) const override {
        auto resident = std::make_shared<OpenVinoResident>();
        for (const auto& array : arrays) {
            resident->names.push_back(array.name);
            resident->tensors.push_back(wrap(array));
        }
        return resident;
    }

    std::vector<HostTensor> infer(const std::vector<TensorView>& feed, const Resident* resident) const override {
        return requests_.with_state([&](ov::InferRequest& request) {
            try {
                for (const auto& tensor : feed) request.set_tensor(tensor.name, wrap(tensor));
                if (const auto* placed = dynamic_cast<const OpenVinoResident*>(resident))
                    for (size_t i = 0; i < placed->names.size(); ++i)
                        request.set_tensor(placed->names[i], placed->tensors[i]);
                request.infer();
                std::vector<HostTensor> outputs;
                for (const auto& spec : spec().outputs) {
                    const ov::Tensor out = request.get_tensor(spec.name);
                    const ov::Shape shape = out.get_shape();  // a copy: begin and end must be of one vector
                    HostTensor host{spec.dtype, std::vector<int64_t>(shape.begin(), shape.end()), {}};
                    const auto* bytes = static_cast<const uint8_t*>(out.data());
                    host.bytes.assign(bytes, bytes + out.get_byte_size());  // a copy: the request reuses its buffers
                    outputs.push_back(std::move(host));
                }
                return outputs;
            } catch (const ov::Exception& err) {
                throw BackendError(spec().name + ": OpenVINO inference failed (" + first_line(err.what()) + ")");
            }
        });
    }

   private:
    ov::CompiledModel compiled_;
    mutable RequestPool<ov::InferRequest> requests_;
};

}  // namespace

bool cpu_has_bf16() {
    const auto capabilities = core().get_property("CPU", ov::device::capabilities);
    return std::find(capabilities.begin(), capabilities.end(), "BF16") != capabilities.end();
}

std::unique_ptr<Graph> open_openvino_graph(const std::string& path, const GraphSpec& spec, bool bf16, int threads) {
    return std::make_unique<OpenVinoGraph>(path, spec, bf16, threads);
}

}  // namespace diffseg
