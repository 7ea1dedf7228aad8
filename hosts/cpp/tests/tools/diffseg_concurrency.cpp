// diffseg-concurrency: one FewShotSegmenter shared by many threads, checked against its own
// sequential answers (tests/test_cpp_host.py runs it on real engines).
//
//   diffseg-concurrency ENGINES BACKEND THREADS ROUNDS A_IMG A_MASK B_IMG B_MASK QUERY...
//
// 1. repeatability and sharing: THREADS threads segment every query ROUNDS times against the
//    cached support A, each in its own order; every mask must equal A's sequential mask;
// 2. swapping: while those threads run, another swaps the cached support between A and B; every
//    mask must equal A's or B's mask for its query, never a mix;
// 3. failures: a bad threshold and an empty support mask throw and leave the segmenter as it was.
// Prints one JSON line of counts; exit status 0 when every count of wrong answers is 0.
#include <atomic>
#include <iostream>
#include <thread>

#include "diffseg/errors.hpp"
#include "diffseg/fewshot.hpp"

using namespace diffseg;

int main(int argc, char** argv) {
    if (argc < 10) {
        std::cerr << "usage: diffseg-concurrency ENGINES BACKEND THREADS ROUNDS A_IMG A_MASK B_IMG B_MASK QUERY...\n";
        return 2;
    }
    const int threads = std::stoi(argv[3]), rounds = std::stoi(argv[4]);
    FewShotSegmenter seg = FewShotSegmenter::open(argv[1], {argv[2], 0});
    const std::vector<Image> a_images{read_image(argv[5])}, b_images{read_image(argv[7])};
    const std::vector<Mask> a_masks{read_mask(argv[6])}, b_masks{read_mask(argv[8])};
    std::vector<Image> queries;
    for (int i = 9; i < argc; ++i) queries.push_back(read_image(argv[i]));

    const auto bank_a = seg.encode_support(a_images, a_masks), bank_b = seg.encode_support(b_images, b_masks);
    std::vector<std::vector<uint8_t>> mask_a, mask_b;
    for (const auto& q : queries) {
        mask_a.push_back(seg.segment(q, std::nullopt, bank_a.get()).values);
        mask_b.push_back(seg.segment(q, std::nullopt, bank_b.get()).values);
    }
    size_t differ = 0;  // queries whose A and B masks differ: the swap phase can only see a mix there
    for (size_t i = 0; i < queries.size(); ++i) differ += mask_a[i] != mask_b[i];

    std::atomic<int> calls{0}, wrong_shared{0}, wrong_swapped{0}, saw_a{0}, saw_b{0};
    seg.set_support(a_images, a_masks);
    auto hammer = [&](bool swapping, int offset) {
        for (int r = 0; r < rounds; ++r)
            for (size_t k = 0; k < queries.size(); ++k) {
                const size_t i = (k + offset + r) % queries.size();
                const auto got = seg.segment(queries[i]).values;
                ++calls;
                if (!swapping) {
                    wrong_shared += got != mask_a[i];
                } else {
                    saw_a += got == mask_a[i] && mask_a[i] != mask_b[i];
                    saw_b += got == mask_b[i] && mask_a[i] != mask_b[i];
                    wrong_swapped += got != mask_a[i] && got != mask_b[i];
                }
            }
    };
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(hammer, false, t);
    for (auto& t : pool) t.join();
    pool.clear();

    std::atomic<bool> done{false};
    std::thread swapper([&] {
        for (int n = 0; !done; ++n) {
            if (n % 2) seg.set_support(a_images, a_masks);
            else seg.set_support(b_images, b_masks);
        }
    });
    for (int t = 0; t < threads; ++t) pool.emplace_back(hammer, true, t);
    for (auto& t : pool) t.join();
    done = true;
    swapper.join();

    // A failed call leaves the instance as it was.
    seg.set_support(b_images, b_masks);
    int refused = 0, wrong_after_failure = 0;
    try {
        seg.segment(queries[0], 2.0);
    } catch (const InputError&) {
        ++refused;
    }
    try {
        seg.set_support(a_images, {Mask(a_images[0].height, a_images[0].width)});
    } catch (const InputError&) {
        ++refused;
    }
    for (size_t i = 0; i < queries.size(); ++i) wrong_after_failure += seg.segment(queries[i]).values != mask_b[i];

    std::cout << "{\"calls\": " << calls << ", \"wrong_shared\": " << wrong_shared
              << ", \"wrong_swapped\": " << wrong_swapped << ", \"saw_a\": " << saw_a << ", \"saw_b\": " << saw_b
              << ", \"queries_where_a_and_b_differ\": " << differ << ", \"refused\": " << refused
              << ", \"wrong_after_failure\": " << wrong_after_failure << ", \"shots\": " << seg.shots() << "}"
              << std::endl;
    return wrong_shared || wrong_swapped || wrong_after_failure || refused != 2 ? 1 : 0;
}
