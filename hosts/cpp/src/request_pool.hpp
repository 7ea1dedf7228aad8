// Idle per-call execution states (OpenVINO infer requests, TensorRT contexts) of one compiled
// graph (runtime/graph.py RequestPool). A call takes an idle one, or makes one when all are busy,
// so concurrent calls never share one; it goes back only when the call succeeded, since a failed
// call leaves its tensors and shapes unknown. The lock guards the idle list only.
#pragma once

#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace diffseg {

template <typename State>
class RequestPool {
   public:
    explicit RequestPool(std::function<State()> create) : create_(std::move(create)) {}

    // Runs work(state) on a state of its own; the state is reused only if work returned normally.
    template <typename Work>
    auto with_state(Work&& work) {
        std::optional<State> state;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!idle_.empty()) {
                state.emplace(std::move(idle_.back()));
                idle_.pop_back();
            }
        }
        if (!state) state.emplace(create_());
        auto result = work(*state);  // an exception propagates and the state is dropped
        std::lock_guard<std::mutex> lock(mutex_);
        idle_.push_back(std::move(*state));
        return result;
    }

   private:
    std::function<State()> create_;
    std::vector<State> idle_;
    std::mutex mutex_;
};

}  // namespace diffseg
