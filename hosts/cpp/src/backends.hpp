// The backends' constructors, behind graph.cpp's open_graph (private to the library).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "diffseg/graph.hpp"

namespace diffseg {

// OpenVINO's CPU plugin, fp32 or bf16, compiled as the Python runtime compiles it
// (runtime/openvino_graph.py), so both give the same outputs.
std::unique_ptr<Graph> open_openvino_graph(const std::string& path, const GraphSpec& spec, bool bf16, int threads);

// The graph's TensorRT plan for this GPU and TensorRT version; throws BackendError where the
// library was built without TensorRT.
std::unique_ptr<Graph> open_tensorrt_graph(const Manifest& manifest, const GraphEntry& entry);

// The names a backend's Resident holds (for Graph::run's completeness check).
std::vector<std::string> resident_names(const Resident* resident);

// A Resident that knows its tensors' names; every backend's placement derives from it.
struct NamedResident : Resident {
    std::vector<std::string> names;
};

}  // namespace diffseg
