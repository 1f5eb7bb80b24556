// Result<T>: the value of an operation that can fail because of the environment
// (I/O, corruption, no space, a missing name), or the errno-valued Error saying why.
//
// The observers follow std::expected (has_value, value, error, operator*, ->,
// value_or) so that Result can become an alias of std::expected once the toolchain
// has it. errno is the error domain end to end: the device produces it, the CLI maps
// it to an exit code, a FUSE reply would carry it unchanged.
//
// Programmer errors are not Results: they are POISE_ASSERTs, which stay on in
// every build.
//
// Thread-safety: plain values; no shared state.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <variant>

namespace poise {

struct Error {
  int code = EIO;          // an errno value
  std::string message;     // what failed, for a person; names the check that failed
  const char* file = "";   // where the error arose
  unsigned line = 0;
};

// Wraps an Error on its way into a Result, as std::unexpected does.
template <class E>
struct Unexpected {
  E value;
  explicit Unexpected(E e) : value(std::move(e)) {}
  const E& error() const& { return value; }
  E&& error() && { return std::move(value); }
};

// Builds the error for `return fail(ENOENT, "no such file: " + path);`. The
// caller's file and line come from the compiler builtins that
// std::source_location is made of (clang 14 with libstdc++ lacks the class).
inline Unexpected<Error> fail(int code, std::string message, const char* file = __builtin_FILE(),
                              unsigned line = __builtin_LINE()) {
  return Unexpected<Error>(Error{code, std::move(message), file, line});
}

[[noreturn]] inline void assertion_failed(const char* expr, const char* file, unsigned line) {
  std::fprintf(stderr, "poise: assertion failed: %s at %s:%u\n", expr, file, line);
  std::abort();
}

#define POISE_ASSERT(expr) \
  ((expr) ? (void)0 : ::poise::assertion_failed(#expr, __FILE__, __LINE__))

template <class T>
class [[nodiscard]] Result {
 public:
  using value_type = T;
  Result(const T& v) : state_(std::in_place_index<0>, v) {}
  Result(T&& v) : state_(std::in_place_index<0>, std::move(v)) {}
  template <class U>
    requires(std::is_constructible_v<T, U &&> && !std::is_same_v<std::decay_t<U>, Result>)
  Result(U&& v) : state_(std::in_place_index<0>, T(std::forward<U>(v))) {}
  Result(Unexpected<Error> e) : state_(std::in_place_index<1>, std::move(e).error()) {}

  bool has_value() const { return state_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { POISE_ASSERT(has_value()); return std::get<0>(state_); }
  const T& value() const& { POISE_ASSERT(has_value()); return std::get<0>(state_); }
  // On a temporary, the value is moved out rather than referenced, so that
  // `for (auto& x : *f())` owns what it walks (a reference would dangle).
  T value() && { POISE_ASSERT(has_value()); return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  template <class U>
  T value_or(U&& other) const& { return has_value() ? value() : T(std::forward<U>(other)); }

  const Error& error() const& { POISE_ASSERT(!has_value()); return std::get<1>(state_); }
  Error&& error() && { POISE_ASSERT(!has_value()); return std::get<1>(std::move(state_)); }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  using value_type = void;
  Result() = default;
  Result(Unexpected<Error> e) : error_(std::make_unique<Error>(std::move(e).error())) {}
  Result(const Result& o) : error_(o.error_ ? std::make_unique<Error>(*o.error_) : nullptr) {}
  Result(Result&&) noexcept = default;
  Result& operator=(Result o) noexcept {
    error_ = std::move(o.error_);
    return *this;
  }

  bool has_value() const { return error_ == nullptr; }
  explicit operator bool() const { return has_value(); }
  void value() const { POISE_ASSERT(has_value()); }
  const Error& error() const& { POISE_ASSERT(!has_value()); return *error_; }
  Error&& error() && { POISE_ASSERT(!has_value()); return std::move(*error_); }

 private:
  std::unique_ptr<Error> error_;  // success costs one null pointer
};

namespace detail {
template <class T>
T unwrap(Result<T>&& r) { return std::move(r).value(); }
inline void unwrap(Result<void>&&) {}
}  // namespace detail

// TRY(expr): evaluates a Result; on error returns it from the enclosing function,
// otherwise yields the value (nothing for Result<void>).
#define TRY(expr)                                                          \
  __extension__({                                                          \
    auto poise_try_result_ = (expr);                                       \
    if (!poise_try_result_.has_value())                                    \
      return ::poise::Unexpected<::poise::Error>(                          \
          std::move(poise_try_result_).error());                           \
    ::poise::detail::unwrap(std::move(poise_try_result_));                 \
  })

}  // namespace poise
