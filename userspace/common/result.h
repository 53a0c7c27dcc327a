// Errors as values: Result<T> holds a T or an Error carrying errno and
// context. Exceptions are used only inside input parsing, and are turned
// into an Error at the parser's edge.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace egressd {

struct Error {
    int errnum = 0;       // errno value, 0 when the error is not a system error
    std::string message;  // what failed and why, with context (file, field, object)

    std::string describe() const {
        if (errnum == 0) return message;
        return message + ": " + std::strerror(errnum);
    }
    // Prepend context: "loading maps: " + inner message.
    Error with_context(const std::string& context) const { return Error{errnum, context + ": " + message}; }
};

inline Error make_error(std::string message) { return Error{0, std::move(message)}; }
inline Error system_error(std::string message, int errnum = errno) { return Error{errnum, std::move(message)}; }

template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : error_(std::move(error)), ok_(false) {}

    bool ok() const { return ok_; }
    explicit operator bool() const { return ok_; }
    const Error& error() const { return error_; }

private:
    Error error_;
    bool ok_ = true;
};

using Status = Result<void>;

}  // namespace egressd
