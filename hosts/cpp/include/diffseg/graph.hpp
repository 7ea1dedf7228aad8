// Execution backends behind one interface (runtime/graph.py, runtime/backends.py):
//
//   auto graph = diffseg::open_graph(manifest, "query_segmenter", "openvino");
//   auto bank = graph->upload({{"key_00", "float32", {2, 256, 32}, data}, ...});  // placed once
//   auto mask = graph->run({{"image", "uint8", {h, w, 3}, pixels}, ...}, bank.get())[0];
//
// | backend         | what runs the graph                                                         |
// | openvino        | OpenVINO's CPU plugin, fp32                                                 |
// | openvino-bf16   | the same in bf16 (CPUs with AVX512-BF16 or AMX) for the graphs the manifest  |
// |                 | allows (`reduced_precision`); the rest fp32                                 |
// | tensorrt        | the directory's TensorRT plans (built with -DDIFFSEG_WITH_TENSORRT=ON only) |
// | auto            | openvino-bf16 where the CPU has bf16, else openvino                         |
//
// `run` is thread-safe: backends whose execution state is not (OpenVINO infer requests, TensorRT
// contexts) give each concurrent call its own from a pool, and a call that fails drops the one it
// used. The checks of every feed live in Graph, so no backend can skip one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffseg/manifest.hpp"

namespace diffseg {

inline constexpr const char* kBackends[] = {"auto", "openvino", "openvino-bf16", "tensorrt"};

// A host array the caller owns, by name: dtype "uint8" or "float32", C order.
struct TensorView {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    const void* data = nullptr;
};

// An output copied to the host.
struct HostTensor {
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;

    template <typename T>
    const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
};

// Inputs placed where a graph reads them (`Graph::upload`); backend-specific, never changed.
struct Resident {
    virtual ~Resident() = default;
    // Host memory the placement holds beyond the caller's arrays (a copy; 0 where it shares them).
    virtual size_t host_bytes() const { return 0; }
};

class Graph {
   public:
    explicit Graph(GraphSpec spec) : spec_(std::move(spec)) {}
    virtual ~Graph() = default;
    const GraphSpec& spec() const { return spec_; }

    // Checks `arrays` (some of the graph's inputs) and places them where the graph reads them.
    // The arrays must outlive the returned object and stay unchanged (a SupportBank owns both).
    std::shared_ptr<const Resident> upload(const std::vector<TensorView>& arrays) const;
    // The outputs, in the descriptor's order, for `feed` plus the `resident` inputs from upload.
    std::vector<HostTensor> run(const std::vector<TensorView>& feed, const Resident* resident = nullptr) const;

   protected:
    virtual std::shared_ptr<const Resident> place(const std::vector<TensorView>& arrays) const = 0;
    virtual std::vector<HostTensor> infer(const std::vector<TensorView>& feed, const Resident* resident) const = 0;

   private:
    GraphSpec spec_;
};

// `auto` -> the fastest CPU backend here (openvino-bf16, unless `reduced_precision` is false, or
// openvino); others checked and unchanged.
std::string resolve_backend(const std::string& backend, bool reduced_precision = true);

// Does OpenVINO's CPU plugin compute in bf16 on this CPU (AVX512-BF16 or AMX)?
bool cpu_has_bf16();

// Graph `name` of an engine directory on `backend` (`threads`: 0 for the backend's default).
std::unique_ptr<Graph> open_graph(const Manifest& manifest, const std::string& name, const std::string& backend,
                                  int threads = 0);

}  // namespace diffseg
