// Support-token selection, index for index as runtime/support_selection.py computes it: SplitMix64
// ranks for "uniform", bit-reversed Z-order positions for "stratified", and foreground cells first
// for "foreground". Every sort has a total order (ties broken by shot, then token), so the kept
// tokens do not depend on the sorting algorithm.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "diffseg/errors.hpp"
#include "diffseg/image.hpp"
#include "diffseg/manifest.hpp"

namespace diffseg {
namespace {

uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int bit_length(int64_t value) {
    int bits = 0;
    for (; value > 0; value >>= 1) ++bits;
    return bits;
}

// Per cell of an h x w grid: the bit-reversal of its place on the Z-order curve.
std::vector<int64_t> spread_rank(int h, int w) {
    const int64_t cells = static_cast<int64_t>(h) * w;
    std::vector<int64_t> codes(cells, 0);
    const int bits_per_axis = bit_length(std::max(h, w));
    for (int64_t i = 0; i < cells; ++i) {
        const int64_t row = i / w, col = i % w;
        for (int bit = 0; bit < bits_per_axis; ++bit) {
            codes[i] |= ((col >> bit) & 1) << (2 * bit);
            codes[i] |= ((row >> bit) & 1) << (2 * bit + 1);
        }
    }
    std::vector<int64_t> curve(cells);
    std::iota(curve.begin(), curve.end(), 0);
    std::stable_sort(curve.begin(), curve.end(), [&](int64_t a, int64_t b) { return codes[a] < codes[b]; });
    std::vector<int64_t> position(cells);
    for (int64_t i = 0; i < cells; ++i) position[curve[i]] = i;
    const int bits = std::max(1, bit_length(cells - 1));
    std::vector<int64_t> rank(cells, 0);
    for (int64_t i = 0; i < cells; ++i)
        for (int bit = 0; bit < bits; ++bit) rank[i] |= ((position[i] >> bit) & 1) << (bits - 1 - bit);
    return rank;
}

// Per cell: at least half its pixels foreground; a cell with no pixel takes the nearest one.
std::vector<bool> foreground_cells(const Mask& mask, int h, int w) {
    const int64_t cells = static_cast<int64_t>(h) * w;
    std::vector<int64_t> total(cells, 0), fore(cells, 0);
    for (int64_t y = 0; y < mask.height; ++y)
        for (int64_t x = 0; x < mask.width; ++x) {
            const int64_t cell = (y * h / mask.height) * w + x * w / mask.width;
            ++total[cell];
            fore[cell] += mask.values[y * mask.width + x] != 0;
        }
    std::vector<bool> out(cells);
    for (int64_t i = 0; i < cells; ++i) {
        const int64_t row = i / w, col = i % w;
        out[i] = total[i] > 0 ? fore[i] * 2 >= total[i]
                              : mask.values[(row * mask.height / h) * mask.width + col * mask.width / w] != 0;
    }
    return out;
}

// Sorts `tokens` (flat s * N + t) by (rank of t, s): every shot's spread positions first.
void sort_spread(std::vector<int64_t>& tokens, const std::vector<int64_t>& rank, int64_t cells) {
    std::sort(tokens.begin(), tokens.end(), [&](int64_t a, int64_t b) {
        const int64_t ra = rank[a % cells], rb = rank[b % cells];
        return ra != rb ? ra < rb : a / cells < b / cells;
    });
}

}  // namespace

std::vector<int64_t> SupportSelection::indices(const std::vector<const Mask*>& masks, int h, int w) const {
    const int64_t cells = static_cast<int64_t>(h) * w, shots = static_cast<int64_t>(masks.size());
    std::vector<int64_t> all(shots * cells);
    std::iota(all.begin(), all.end(), 0);
    if (!reduces(masks.size())) return all;
    const size_t budget = static_cast<size_t>(budget_shots) * cells;
    std::vector<int64_t> kept;
    if (rule == "uniform") {
        std::vector<uint64_t> keys(all.size());
        for (size_t i = 0; i < all.size(); ++i) keys[i] = splitmix64((seed << 32) + i);
        std::sort(all.begin(), all.end(), [&](int64_t a, int64_t b) { return keys[a] != keys[b] ? keys[a] < keys[b] : a < b; });
        kept.assign(all.begin(), all.begin() + budget);
    } else {
        const std::vector<int64_t> rank = spread_rank(h, w);
        if (rule == "stratified") {
            sort_spread(all, rank, cells);
            kept.assign(all.begin(), all.begin() + budget);
        } else {  // foreground
            std::vector<int64_t> fore, back;
            for (int64_t s = 0; s < shots; ++s) {
                const std::vector<bool> on = foreground_cells(*masks[s], h, w);
                for (int64_t t = 0; t < cells; ++t) (on[t] ? fore : back).push_back(s * cells + t);
            }
            sort_spread(fore, rank, cells);
            sort_spread(back, rank, cells);
            const size_t want = static_cast<size_t>(std::floor(foreground_share * budget + 0.5));
            const size_t take_fore = std::min(fore.size(), std::max(want, budget - std::min(budget, back.size())));
            kept.assign(fore.begin(), fore.begin() + take_fore);
            kept.insert(kept.end(), back.begin(), back.begin() + (budget - take_fore));
        }
    }
    std::sort(kept.begin(), kept.end());
    return kept;
}

std::string SupportSelection::describe() const {
    if (rule == "all") return "all";
    std::string text = rule + ", budget " + std::to_string(budget_shots) + " shots";
    if (rule == "uniform") text += ", seed " + std::to_string(seed);
    if (rule == "foreground") text += ", foreground share " + python_float(foreground_share);
    return text;
}

}  // namespace diffseg
