// SPDX-License-Identifier: Apache-2.0
// The list of (value, gradient) buffers an optimizer updates, with the checks every step shares.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "vera/adapter/adapter.hpp"
#include "vera/adapter/gradients.hpp"
#include "vera/layer/linear.hpp"
#include "vera/core/error.hpp"
#include "vera/core/optim_options.hpp"
#include "vera/core/shape.hpp"

namespace vera::optim {

/// \brief One trained buffer: `size` contiguous values and the gradient buffer beside them.
///
/// The optimizer keeps the two pointers, so both buffers must outlive it and keep their address
/// (do not resize them). `decay` says whether weight decay applies (common practice: weights
/// yes, biases and normalisation scales no). `locked`, when set, is asked before every step; a
/// true answer makes the step throw state_error (a vera::linear that is merged, for example).
template <class T>
struct parameter {
  std::string name;  ///< unique within one optimizer; keys the saved state
  T* value = nullptr;  ///< `size` contiguous values, updated in place
  const T* gradient = nullptr;  ///< `size` contiguous gradient values, read by step()
  index size = 0;  ///< number of elements
  bool decay = true;  ///< whether weight decay applies
  std::function<bool()> locked;  ///< optional; true refuses a step (state_error)
};

namespace detail {

template <class D>
constexpr bool direct_access_v =
    (Eigen::internal::traits<D>::Flags & Eigen::DirectAccessBit) != 0;

// Contiguous: one run of size() elements, whatever the storage order.
template <class D>
bool contiguous(const Eigen::DenseBase<D>& m) {
  if (m.size() <= 1) return true;
  if (m.innerStride() != 1) return false;
  return m.outerSize() == 1 || m.outerStride() == m.innerSize();
}

}  // namespace detail

/// \brief What an optimizer keeps for one parameter, for checkpoints: how many steps it took and
///        its buffers (AdamW: first and second moments; SGD: the momentum buffer in `first`,
///        `second` empty). Buffers are empty before the parameter's first step.
template <class T>
struct slot_state {
  std::string parameter;  ///< the parameter's name
  std::uint64_t steps = 0;  ///< steps this parameter took (0: buffers empty)
  std::vector<T> first;  ///< AdamW: first moment; SGD: momentum buffer
  std::vector<T> second;  ///< AdamW: second moment; SGD: empty
};

/// \brief The parameters of one optimizer, in registration order.
template <class T>
class parameter_list {
 public:
  /// \brief Registers an Eigen buffer (matrix, vector, Map or block with contiguous storage)
  ///        and its gradient (same number of elements, contiguous).
  ///
  /// Throws shape_error when the sizes differ or a buffer is not contiguous, value_error for an
  /// empty or repeated name. Elements are matched by position in memory, so value and gradient
  /// must share a storage order when they are matrices.
  template <class VD, class GD>
  void add(std::string name, Eigen::DenseBase<VD>& value, const Eigen::DenseBase<GD>& gradient,
           bool decay = true) {
    add_buffer(std::move(name), value.derived(), gradient.derived(), decay, {});
  }
  /// \brief As above for a writable temporary view such as `adapter.lambda_b()`.
  template <class VD, class GD>
  void add(std::string name, Eigen::DenseBase<VD>&& value, const Eigen::DenseBase<GD>& gradient,
           bool decay = true) {
    add_buffer(std::move(name), value.derived(), gradient.derived(), decay, {});
  }

  /// \brief Registers the trained vectors of `ad` (lambda_b if train_b, lambda_d if train_d) as
  ///        "<name>.lambda_b" / "<name>.lambda_d" with gradients from `grads`.
  ///
  /// `grads` must already be sized for `ad` (out, rank): gradients<T>(ad).
  /// \throws shape_error when `grads` is not sized for `ad`; value_error for an empty or
  ///         repeated name. On error nothing is registered.
  void add(const std::string& name, adapter<T>& ad, const gradients<T>& grads, bool decay = true) {
    add_adapter(name, ad, grads, decay, {});
  }

  /// \brief Registers the adapter of `layer`; a step while the layer is merged throws
  ///        state_error, since changing b or d then would make unmerge() subtract another ΔW.
  /// \throws state_error when the layer is merged already; otherwise as the adapter overload.
  template <class Storage>
  void add(const std::string& name, linear<T, Storage>& layer, const gradients<T>& grads,
           bool decay = true) {
    const linear<T, Storage>* watched = &layer;
    add_adapter(name, layer.vera_adapter(), grads, decay, [watched] { return watched->merged(); });
  }

  /// \brief The registered parameters, in registration order.
  const std::vector<parameter<T>>& items() const noexcept { return items_; }
  /// \brief Number of registered parameters (not scalars; see scalars()).
  std::size_t size() const noexcept { return items_.size(); }
  /// \brief True when nothing is registered.
  bool empty() const noexcept { return items_.empty(); }
  /// \brief Total number of trained scalars.
  index scalars() const noexcept {
    index total = 0;
    for (const auto& p : items_) total += p.size;
    return total;
  }

  /// \brief Checks `saved` against the registered parameters before an optimizer adopts it:
  ///        one entry per parameter, by name, in any order; a buffer the optimizer uses is of
  ///        the parameter's size after its first step and empty before, an unused one is empty;
  ///        values finite. Returns, for each registered parameter, the index of its entry.
  /// \throws value_error for a missing or extra entry or a non-finite value; shape_error for a
  ///         buffer of the wrong size. `who` prefixes the message.
  std::vector<std::size_t> match_state(const char* who, const std::vector<slot_state<T>>& saved,
                                       bool first_used, bool second_used) const {
    if (saved.size() != items_.size()) {
      throw value_error(std::string(who) + ": the state has " + std::to_string(saved.size()) +
                        " parameters, the optimizer " + std::to_string(items_.size()));
    }
    std::vector<std::size_t> order;
    for (const auto& p : items_) {
      std::size_t found = saved.size();
      for (std::size_t k = 0; k < saved.size(); ++k) {
        if (saved[k].parameter == p.name) found = k;
      }
      if (found == saved.size()) {
        throw value_error(std::string(who) + ": the state has no entry for parameter '" + p.name + "'");
      }
      const slot_state<T>& s = saved[found];
      const auto check = [&](const std::vector<T>& buffer, const char* what, bool used) {
        const auto expected = static_cast<std::size_t>(s.steps == 0 || !used ? 0 : p.size);
        if (buffer.size() != expected) {
          throw shape_error(std::string(who) + ": parameter '" + p.name + "' " + what + ": expected " +
                            std::to_string(expected) + " values, got " + std::to_string(buffer.size()));
        }
        for (const T v : buffer) {
          if (!std::isfinite(static_cast<double>(v))) {
            throw value_error(std::string(who) + ": parameter '" + p.name + "' " + what +
                              " holds a non-finite value");
          }
        }
      };
      check(s.first, "first buffer", first_used);
      check(s.second, "second buffer", second_used);
      order.push_back(found);
    }
    return order;
  }

  /// \brief Throws (state_error for a locked parameter, value_error for a non-finite gradient
  ///        element, naming parameter and position) before any value changes; `who` prefixes
  ///        the message.
  void check_step(const char* who) const {
    for (const auto& p : items_) {
      if (p.locked && p.locked()) {
        throw state_error(std::string(who) + ": parameter '" + p.name +
                          "' is locked (its layer is merged); no parameter was changed");
      }
      for (index i = 0; i < p.size; ++i) {
        if (!std::isfinite(static_cast<double>(p.gradient[i]))) {
          throw value_error(std::string(who) + ": gradient of '" + p.name + "' element " +
                            std::to_string(i) + " is not finite; no parameter was changed");
        }
      }
    }
  }

 private:
  template <class VD, class GD>
  void add_buffer(std::string name, VD& value, const GD& gradient, bool decay,
                  std::function<bool()> locked) {
    static_assert(std::is_same_v<typename VD::Scalar, T> && std::is_same_v<typename GD::Scalar, T>,
                  "vera::optim: value and gradient must have the optimizer's scalar type");
    static_assert(detail::direct_access_v<VD> && detail::direct_access_v<GD>,
                  "vera::optim: value and gradient must be stored buffers, not expressions");
    static_assert(!std::is_const_v<std::remove_pointer_t<decltype(value.data())>>,
                  "vera::optim: the value buffer must be writable");
    check_name(name);
    const std::string operand = "parameter '" + name + "' gradient";
    vera::detail::check_size(operand.c_str(), value.size(), gradient.size());
    if (!detail::contiguous(value) || !detail::contiguous(gradient)) {
      throw shape_error("vera::optim: parameter '" + name +
                        "': value and gradient must be contiguous buffers (no strided views)");
    }
    items_.push_back({std::move(name), value.data(), gradient.data(), value.size(), decay,
                      std::move(locked)});
  }

  void add_adapter(const std::string& name, adapter<T>& ad, const gradients<T>& grads, bool decay,
                   const std::function<bool()>& locked) {
    vera::detail::check_size(("'" + name + "' gradients lambda_b").c_str(), ad.out_features(),
               grads.lambda_b.size());
    vera::detail::check_size(("'" + name + "' gradients lambda_d").c_str(), ad.rank(), grads.lambda_d.size());
    // Validate both names before registering either, so a failure registers nothing.
    if (ad.options().train_b) check_name(name + ".lambda_b");
    if (ad.options().train_d) check_name(name + ".lambda_d");
    if (ad.options().train_b) {
      auto b = ad.lambda_b();
      add_buffer(name + ".lambda_b", b, grads.lambda_b, decay, locked);
    }
    if (ad.options().train_d) {
      auto d = ad.lambda_d();
      add_buffer(name + ".lambda_d", d, grads.lambda_d, decay, locked);
    }
  }

  void check_name(const std::string& name) const {
    if (name.empty()) throw value_error("vera::optim: a parameter has an empty name");
    for (const auto& p : items_) {
      if (p.name == name) {
        throw value_error("vera::optim: parameter '" + name + "' is registered twice");
      }
    }
  }

  std::vector<parameter<T>> items_;
};

namespace detail {

/// \brief Per-parameter optimizer state (step count and up to two buffers), kept in step with a
///        parameter_list: what SGD and AdamW share.
template <class T>
class slot_store {
 public:
  /// \brief `first_used` / `second_used`: which buffers the optimizer keeps per parameter.
  slot_store(bool first_used, bool second_used) : first_used_(first_used), second_used_(second_used) {}

  /// \brief Gives parameters registered since the last call zero steps and zeroed buffers (as
  ///        PyTorch does for a parameter's first step); allocates only then.
  void grow(const parameter_list<T>& parameters) {
    const auto& items = parameters.items();
    const std::size_t known = counts_.size();
    counts_.resize(items.size(), 0);
    first_.resize(items.size());
    second_.resize(items.size());
    for (std::size_t k = known; k < items.size(); ++k) {
      if (first_used_) first_[k].assign(static_cast<std::size_t>(items[k].size), T(0));
      if (second_used_) second_[k].assign(static_cast<std::size_t>(items[k].size), T(0));
    }
  }

  /// \brief Step count of parameter k (registration order); grow() must have covered k.
  std::uint64_t& count(std::size_t k) { return counts_[k]; }
  /// \brief First buffer of parameter k (`size` values), or null when the optimizer keeps none.
  T* first(std::size_t k) { return first_[k].data(); }
  /// \brief Second buffer of parameter k (`size` values), or null when the optimizer keeps none.
  T* second(std::size_t k) { return second_[k].data(); }
  /// \brief The most steps any parameter took.
  std::uint64_t max_count() const {
    return counts_.empty() ? 0 : *std::max_element(counts_.begin(), counts_.end());
  }

  /// \brief The state of every registered parameter (empty buffers before its first step).
  std::vector<slot_state<T>> save(const parameter_list<T>& parameters) const {
    std::vector<slot_state<T>> out;
    const auto& items = parameters.items();
    for (std::size_t k = 0; k < items.size(); ++k) {
      slot_state<T> s;
      s.parameter = items[k].name;
      if (k < counts_.size() && counts_[k] > 0) {
        s.steps = counts_[k];
        if (first_used_) s.first = first_[k];
        if (second_used_) s.second = second_[k];
      }
      out.push_back(std::move(s));
    }
    return out;
  }

  /// \brief Adopts `saved` after parameter_list::match_state accepted all of it; on error
  ///        nothing changes.
  void load(const parameter_list<T>& parameters, const std::vector<slot_state<T>>& saved,
            const char* who) {
    const auto order = parameters.match_state(who, saved, first_used_, second_used_);
    const auto& items = parameters.items();
    slot_store next(first_used_, second_used_);
    next.grow(parameters);
    for (std::size_t k = 0; k < items.size(); ++k) {
      const slot_state<T>& s = saved[order[k]];
      next.counts_[k] = s.steps;
      if (s.steps == 0) continue;
      if (first_used_) next.first_[k] = s.first;
      if (second_used_) next.second_[k] = s.second;
    }
    *this = std::move(next);
  }

 private:
  bool first_used_;
  bool second_used_;
  std::vector<std::uint64_t> counts_;
  std::vector<std::vector<T>> first_;
  std::vector<std::vector<T>> second_;
};

/// \brief What SGD and AdamW share besides their update rule: the settings, the registered
///        parameters, their slots and the step count, with registration, checkpoints and the
///        learning rate; the optimizer adds step(). `who` names the optimizer in messages.
template <class T, class Options>
class optimizer_core {
 public:
  /// \brief Registers buffers; see parameter_list::add for the overloads and their checks.
  template <class... Args>
  void add(Args&&... args) {
    parameters_.add(std::forward<Args>(args)...);
  }

  /// \brief Per-parameter step counts and buffers (`first`, `second`), for a checkpoint.
  std::vector<slot_state<T>> state() const { return slots_.save(parameters_); }
  /// \brief Restores what state() returned (parameters matched by name, in any order), so that
  ///        training resumes exactly. Checks everything first (see parameter_list::match_state);
  ///        on error the optimizer is unchanged.
  /// \throws value_error for a missing or extra parameter or a non-finite value; shape_error
  ///         for a buffer of the wrong size.
  void load_state(const std::vector<slot_state<T>>& saved) {
    slots_.load(parameters_, saved, (std::string(who_) + "::load_state").c_str());
    steps_ = static_cast<std::size_t>(slots_.max_count());
  }

  /// \brief Changes the learning rate (for schedules); throws value_error when not finite or < 0.
  void set_lr(double lr) {
    check_lr(who_, lr);
    options_.lr = lr;
  }
  /// \brief The current settings (lr as last set by set_lr).
  const Options& options() const noexcept { return options_; }
  /// \brief The registered parameters.
  const parameter_list<T>& parameters() const noexcept { return parameters_; }
  /// \brief Steps taken (after load_state: the most steps any parameter took).
  std::size_t steps() const noexcept { return steps_; }

 protected:
  /// Checks the settings; `first_used` / `second_used` as for slot_store.
  optimizer_core(const Options& options, const char* who, bool first_used, bool second_used)
      : options_(options), slots_(first_used, second_used), who_(who) {
    optim::validate(options_, who_);
  }

  Options options_;
  parameter_list<T> parameters_;
  slot_store<T> slots_;
  std::size_t steps_ = 0;

 private:
  const char* who_;
};

}  // namespace detail

}  // namespace vera::optim
