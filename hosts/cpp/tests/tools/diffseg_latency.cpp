// diffseg-latency: per-call times of the C++ host, for benchmarks/cpp_latency.py (which runs the
// Python runtime beside it in the same run).
//
//   diffseg-latency fewshot ENGINES BACKEND THREADS WARMUP CALLS QUERY SUPPORT MASK [SUPPORT MASK ...]
//   diffseg-latency parts ENGINES BACKEND THREADS WARMUP CALLS IMAGE
//
// Images are decoded once; each timed call is segment() alone. Prints one JSON line: the backend
// and the milliseconds of every timed call.
#include <chrono>
#include <iostream>

#include "diffseg/fewshot.hpp"
#include "diffseg/parts.hpp"

using namespace diffseg;

template <typename Call>
void time_calls(const std::string& backend, int warmup, int calls, Call&& call) {
    for (int i = 0; i < warmup; ++i) call();
    std::cout << "{\"backend\": \"" << backend << "\", \"ms\": [";
    for (int i = 0; i < calls; ++i) {
        const auto start = std::chrono::steady_clock::now();
        call();
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        std::cout << (i ? ", " : "") << ms;
    }
    std::cout << "]}" << std::endl;
}

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() < 7 || (args[0] == "fewshot" && (args.size() < 9 || args.size() % 2 == 0))) {
        std::cerr << "usage: diffseg-latency fewshot|parts ENGINES BACKEND THREADS WARMUP CALLS IMAGE [SUPPORT MASK ...]\n";
        return 2;
    }
    const Options options{args[2], std::stoi(args[3])};
    const int warmup = std::stoi(args[4]), calls = std::stoi(args[5]);
    const Image image = read_image(args[6]);
    if (args[0] == "parts") {
        const PartSegmenter seg = PartSegmenter::open(args[1], options);
        time_calls(seg.backend(), warmup, calls, [&] { seg.segment(image); });
        return 0;
    }
    FewShotSegmenter seg = FewShotSegmenter::open(args[1], options);
    std::vector<Image> supports;
    std::vector<Mask> masks;
    for (size_t i = 7; i + 1 < args.size(); i += 2) {
        supports.push_back(read_image(args[i]));
        masks.push_back(read_mask(args[i + 1]));
    }
    seg.set_support(supports, masks);
    time_calls(seg.backend(), warmup, calls, [&] { seg.segment(image); });
    return 0;
}
