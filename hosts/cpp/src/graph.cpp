// What every backend shares: feeds and resident inputs checked against the descriptor, and the
// choice of backend.
#include "diffseg/graph.hpp"

#include <algorithm>
#include <map>

#include "backends.hpp"
#include "diffseg/errors.hpp"

namespace diffseg {
namespace {

}  // namespace

std::shared_ptr<const Resident> Graph::upload(const std::vector<TensorView>& arrays) const {
    for (const auto& array : arrays) {
        const auto names = spec_.input_names();
        if (std::find(names.begin(), names.end(), array.name) == names.end())
            throw InputError(spec_.name + ": no input named '" + array.name + "'");
        spec_.input(array.name).check(array.dtype, array.shape, spec_.name);
    }
    return place(arrays);
}

std::vector<HostTensor> Graph::run(const std::vector<TensorView>& feed, const Resident* resident) const {
    std::map<std::string, int> given;
    for (const auto& tensor : feed) ++given[tensor.name];
    for (const auto& name : resident_names(resident)) ++given[name];
    std::vector<std::string> missing, extra;
    for (const auto& name : spec_.input_names())
        if (!given.count(name)) missing.push_back(name);
    for (const auto& [name, count] : given) {
        const auto names = spec_.input_names();
        if (count > 1 || std::find(names.begin(), names.end(), name) == names.end()) extra.push_back(name);
    }
    if (!missing.empty() || !extra.empty())
        throw InputError(spec_.name + ": inputs missing " + python_list(missing) + ", unknown or given twice " +
                         python_list(extra));
    for (const auto& tensor : feed) spec_.input(tensor.name).check(tensor.dtype, tensor.shape, spec_.name);
    return infer(feed, resident);
}

std::string resolve_backend(const std::string& backend, bool reduced_precision) {
    const bool known = std::any_of(std::begin(kBackends), std::end(kBackends),
                                   [&](const char* name) { return backend == name; });
    if (!known) {
        std::string names;
        for (const char* name : kBackends) names += (names.empty() ? "('" : ", '") + std::string(name) + "'";
        throw InputError("unknown backend '" + backend + "'; choose one of " + names + ")");
    }
    if (backend != "auto") return backend;
    return reduced_precision && cpu_has_bf16() ? "openvino-bf16" : "openvino";
}

std::unique_ptr<Graph> open_graph(const Manifest& manifest, const std::string& name, const std::string& backend,
                                  int threads) {
    const std::string resolved = resolve_backend(backend);
    const GraphEntry& entry = manifest.graph(name);
    if (threads < 0) throw InputError("threads must be a positive integer or 0 (the backend's default), got " +
                                      std::to_string(threads));
    if (resolved == "tensorrt") return open_tensorrt_graph(manifest, entry);
    const bool bf16 = resolved == "openvino-bf16" && entry.reduced_precision;
    return open_openvino_graph(manifest.directory + "/" + entry.file, entry.spec, bf16, threads);
}

}  // namespace diffseg

namespace diffseg {

std::vector<std::string> resident_names(const Resident* resident) {
    const auto* named = dynamic_cast<const NamedResident*>(resident);
    return named ? named->names : std::vector<std::string>{};
}

}  // namespace diffseg
