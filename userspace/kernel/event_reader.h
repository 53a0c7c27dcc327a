// Decision events from the kernel's ring buffer (events_v1), as they arrive.
#pragma once

#include <functional>
#include <memory>

#include "common/result.h"
#include "egressd_abi.h"

struct ring_buffer;

namespace egressd {

// Only the agent reads the ring (a ring buffer has one consumer position).
class EventReader {
public:
    using Callback = std::function<void(const egressd_event&)>;
    static Result<std::unique_ptr<EventReader>> open(int events_map_fd, Callback callback);
    ~EventReader();
    int epoll_fd() const;  // readable when events are waiting
    // Hands every waiting event to the callback; returns how many.
    Result<int> drain();

private:
    EventReader() = default;
    struct Ring;
    std::unique_ptr<Ring> ring_;
    Callback callback_;
};

}  // namespace egressd
