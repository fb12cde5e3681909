// SPDX-License-Identifier: Apache-2.0
// safetensors reader (validating, for untrusted files) and writer (atomic), with dtype conversion.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "vera/core/error.hpp"
#include "vera/io/dtype.hpp"
#include "vera/io/error.hpp"
#include "vera/io/file.hpp"

namespace vera::io {

namespace detail {

/// \brief Largest header accepted, in bytes (the reference implementation's limit).
inline constexpr std::uint64_t max_header_size = 100'000'000;

}  // namespace detail

/// \brief One tensor of a safetensors file, as its header describes it (already validated).
struct tensor_info {
  std::string name;  ///< the tensor's key in the header
  dtype type = dtype::f32;  ///< element type as stored
  std::vector<std::uint64_t> shape;  ///< extents, row-major; empty for a scalar
  std::uint64_t begin = 0;  ///< first byte, relative to the start of the data region
  std::uint64_t end = 0;    ///< one past the last byte

  /// \brief Number of elements (product of the shape; 1 for a scalar).
  std::uint64_t elements() const {
    std::uint64_t count = 1;
    for (const auto extent : shape) count *= extent;
    return count;
  }
  /// \brief Bytes of the tensor's data (end - begin).
  std::uint64_t byte_size() const noexcept { return end - begin; }
};

/// \brief "[2, 3]" for a shape, as messages print it.
inline std::string shape_string(const std::vector<std::uint64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

namespace detail {

inline bool multiply_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& product) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return true;
  product = a * b;
  return false;
}

inline std::uint64_t load_le(const unsigned char* bytes, std::size_t count) {
  std::uint64_t value = 0;
  for (std::size_t i = count; i-- > 0;) value = (value << 8) | bytes[i];
  return value;
}

inline void store_le(std::uint64_t value, std::size_t count, unsigned char* bytes) {
  for (std::size_t i = 0; i < count; ++i) {
    bytes[i] = static_cast<unsigned char>(value & 0xFFu);
    value >>= 8;
  }
}

inline std::string offsets_string(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

inline const char* json_kind(const nlohmann::json& value) { return value.type_name(); }

// Decodes `count` little-endian elements of a convertible dtype; every conversion to float or
// double is exact except F64 -> float, which rounds to nearest.
template <class T>
void decode(dtype type, const unsigned char* in, std::size_t count, T* out) {
  switch (type) {
    case dtype::f16:
      for (std::size_t i = 0; i < count; ++i) {
        out[i] = static_cast<T>(half_to_float(static_cast<std::uint16_t>(load_le(in + 2 * i, 2))));
      }
      break;
    case dtype::bf16:
      for (std::size_t i = 0; i < count; ++i) {
        out[i] =
            static_cast<T>(bfloat16_to_float(static_cast<std::uint16_t>(load_le(in + 2 * i, 2))));
      }
      break;
    case dtype::f32:
      for (std::size_t i = 0; i < count; ++i) {
        out[i] = static_cast<T>(bit_cast<float>(static_cast<std::uint32_t>(load_le(in + 4 * i, 4))));
      }
      break;
    case dtype::f64:
      for (std::size_t i = 0; i < count; ++i) {
        const double value = bit_cast<double>(load_le(in + 8 * i, 8));
        if constexpr (std::is_same_v<T, float>) {
          out[i] = narrow_to_float(value);
        } else {
          out[i] = static_cast<T>(value);
        }
      }
      break;
    default:
      break;  // callers check is_convertible first
  }
}

// Encodes `count` values into a convertible dtype, rounding once to nearest even.
template <class T>
void encode(dtype type, const T* in, std::size_t count, unsigned char* out) {
  for (std::size_t i = 0; i < count; ++i) {
    const double wide = static_cast<double>(in[i]);
    switch (type) {
      case dtype::f16:
        store_le(std::is_same_v<T, float> ? float_to_half(static_cast<float>(in[i]))
                                          : double_to_half(wide),
                 2, out + 2 * i);
        break;
      case dtype::bf16:
        store_le(std::is_same_v<T, float> ? float_to_bfloat16(static_cast<float>(in[i]))
                                          : double_to_bfloat16(wide),
                 2, out + 2 * i);
        break;
      case dtype::f32:
        store_le(bit_cast<std::uint32_t>(narrow_to_float(wide)), 4, out + 4 * i);
        break;
      case dtype::f64:
        store_le(bit_cast<std::uint64_t>(wide), 8, out + 8 * i);
        break;
      default:
        break;  // callers check is_convertible first
    }
  }
}

}  // namespace detail

/// \brief A parsed, validated view of a safetensors image in memory; does not own the bytes.
///
/// Everything in the image is untrusted. Construction checks, and reports as format_error with
/// the source name, tensor name and byte offsets: the 8-byte header length (at most
/// max_header_size and within the image), the header JSON (syntax, UTF-8, nesting, duplicate
/// names, field types), each tensor's dtype x shape against its data_offsets (overflow-safe),
/// and that the tensors tile the data region exactly: in range, no overlap, no gap, no trailing
/// bytes. After construction every tensor's bytes lie inside the image.
class safetensors_view {
 public:
  safetensors_view() = default;

  /// \brief Parses `size` bytes at `data`, which must outlive the view; `source` names it in
  ///        messages (a file name, say).
  safetensors_view(const unsigned char* data, std::size_t size, std::string source = "<memory>")
      : source_(std::move(source)) {
    parse(data, size);
  }

  /// \brief Name used in messages.
  const std::string& source() const noexcept { return source_; }
  /// \brief Every tensor, sorted by name.
  const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
  /// \brief The `__metadata__` string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// \brief Length of the JSON header in bytes (the first 8 bytes of the file hold it).
  std::uint64_t header_size() const noexcept { return header_size_; }
  /// \brief Bytes of the data region (after the header).
  std::uint64_t data_size() const noexcept { return data_size_; }

  /// \brief The tensor called `name`, or null.
  const tensor_info* find(std::string_view name) const {
    const auto it =
        std::lower_bound(tensors_.begin(), tensors_.end(), name,
                         [](const tensor_info& t, std::string_view n) { return t.name < n; });
    return it != tensors_.end() && it->name == name ? &*it : nullptr;
  }
  /// \brief Whether a tensor called `name` exists.
  bool contains(std::string_view name) const { return find(name) != nullptr; }

  /// \brief The tensor called `name`; throws format_error naming the file when it is absent.
  const tensor_info& at(std::string_view name) const {
    const tensor_info* info = find(name);
    if (info == nullptr)
      throw format_error(source_ + ": no tensor named '" + std::string(name) + "'");
    return *info;
  }

  /// \brief First byte of a tensor's data (byte_size() bytes, little-endian elements).
  const unsigned char* bytes(const tensor_info& info) const noexcept { return data_ + info.begin; }

  /// \brief A tensor's elements converted to T (float or double), row-major.
  ///
  /// F16, BF16 and F32 convert exactly; F64 rounds when T is float. Other dtypes throw
  /// format_error.
  template <class T>
  std::vector<T> values(const tensor_info& info) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "values<T>: T must be float or double");
    require_convertible(info);
    std::vector<T> out(static_cast<std::size_t>(info.elements()));
    detail::decode(info.type, bytes(info), out.size(), out.data());
    return out;
  }
  /// \brief values(at(name)): the elements of the tensor called `name`.
  /// \throws format_error when absent or of a dtype that does not convert.
  template <class T>
  std::vector<T> values(std::string_view name) const {
    return values<T>(at(name));
  }

  /// \brief Like values(), into `out`, which must hold info.elements() elements.
  /// \throws format_error for a dtype that does not convert to floating point.
  template <class T>
  void values_into(const tensor_info& info, T* out) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "values_into<T>: T must be float or double");
    require_convertible(info);
    detail::decode(info.type, bytes(info), static_cast<std::size_t>(info.elements()), out);
  }

 private:
  void require_convertible(const tensor_info& info) const {
    if (!detail::is_convertible(info.type)) {
      throw format_error(source_ + ": tensor '" + info.name + "' has dtype " +
                         dtype_name(info.type) +
                         "; only F16, BF16, F32 and F64 convert to floating point");
    }
  }

  [[noreturn]] void fail(const std::string& message) const {
    throw format_error(source_ + ": " + message);
  }

  void parse(const unsigned char* data, std::size_t size) {
    if (size < 8) {
      fail(std::to_string(size) +
           " bytes is too short for a safetensors file (the 8-byte header length is "
           "missing)");
    }
    const std::uint64_t header_size = detail::load_le(data, 8);
    if (header_size > detail::max_header_size) {
      fail("header length " + std::to_string(header_size) + " (bytes 0-7) exceeds the limit of " +
           std::to_string(detail::max_header_size) + " bytes");
    }
    if (header_size > size - 8) {
      fail("header length " + std::to_string(header_size) +
           " (bytes 0-7) runs past the end of the file: the "
           "header would end at byte " +
           std::to_string(8 + header_size) + " of " + std::to_string(size) + " (truncated file?)");
    }
    header_size_ = header_size;
    data_ = data + 8 + header_size;
    data_size_ = size - 8 - header_size;
    const nlohmann::json header =
        parse_json(reinterpret_cast<const char*>(data + 8), static_cast<std::size_t>(header_size));
    if (!header.is_object()) {
      fail(std::string("header (bytes 8-") + std::to_string(8 + header_size) + ") is a JSON " +
           detail::json_kind(header) + ", expected an object");
    }
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        read_metadata(value);
      } else {
        tensors_.push_back(read_tensor(name, value));
      }
    }
    check_layout();
    std::sort(tensors_.begin(), tensors_.end(),
              [](const tensor_info& a, const tensor_info& b) { return a.name < b.name; });
  }

  // The header's legitimate nesting is object -> tensor object -> shape array; anything deeper
  // is refused while parsing, before it can cost memory. Duplicate keys, which a JSON object
  // would silently collapse, are caught the same way.
  nlohmann::json parse_json(const char* text, std::size_t length) const {
    std::set<std::string> top_keys;
    std::set<std::string> inner_keys;
    std::string current;
    const auto watch = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      using event_t = nlohmann::json::parse_event_t;
      if ((event == event_t::object_start || event == event_t::array_start) && depth > 2) {
        fail("header nests JSON deeper than a safetensors header does (inside '" + current + "')");
      }
      if (event == event_t::object_start && depth == 1) inner_keys.clear();
      if (event == event_t::key && depth == 1) {
        current = parsed.get<std::string>();
        if (!top_keys.insert(current).second)
          fail("tensor name '" + current + "' appears twice in the header");
      }
      if (event == event_t::key && depth == 2) {
        const auto key = parsed.get<std::string>();
        if (!inner_keys.insert(key).second) fail("'" + current + "' has key '" + key + "' twice");
      }
      return true;
    };
    try {
      return nlohmann::json::parse(text, text + length, watch);
    } catch (const nlohmann::json::exception& e) {
      // parse_error for syntax, out_of_range for numbers beyond double (e.g. 1e999)
      fail("header (bytes 8-" + std::to_string(8 + length) + ") is not valid JSON: " + e.what());
    }
  }

  void read_metadata(const nlohmann::json& value) {
    if (value.is_null()) return;
    if (!value.is_object()) {
      fail(std::string("__metadata__ is a JSON ") + detail::json_kind(value) +
           ", expected an object of strings");
    }
    for (const auto& [key, entry] : value.items()) {
      if (!entry.is_string()) {
        fail("__metadata__ entry '" + key + "' is a JSON " + detail::json_kind(entry) +
             ", expected a string");
      }
      metadata_.emplace(key, entry.get<std::string>());
    }
  }

  std::uint64_t read_count(const std::string& name, const char* field, std::size_t index,
                           const nlohmann::json& value) const {
    if (value.is_number_unsigned()) return value.get<std::uint64_t>();
    const std::string where =
        "tensor '" + name + "': " + field + "[" + std::to_string(index) + "] is ";
    if (value.is_number_integer()) fail(where + value.dump() + ", expected a non-negative integer");
    fail(where + "a JSON " + detail::json_kind(value) + ", expected a non-negative integer");
  }

  tensor_info read_tensor(const std::string& name, const nlohmann::json& value) const {
    const std::string where = "tensor '" + name + "'";
    if (!value.is_object()) {
      fail(where + " is a JSON " + detail::json_kind(value) +
           ", expected an object with dtype, shape and "
           "data_offsets");
    }
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(field)) fail(where + " has no '" + field + "'");
    }
    tensor_info info;
    info.name = name;

    const auto& type = value.at("dtype");
    if (!type.is_string())
      fail(where + ": dtype is a JSON " + detail::json_kind(type) + ", expected a string");
    const auto parsed = parse_dtype(type.get<std::string>());
    if (!parsed) fail(where + ": unsupported dtype '" + type.get<std::string>() + "'");
    info.type = *parsed;

    const auto& shape = value.at("shape");
    if (!shape.is_array())
      fail(where + ": shape is a JSON " + detail::json_kind(shape) + ", expected an array");
    for (std::size_t i = 0; i < shape.size(); ++i)
      info.shape.push_back(read_count(name, "shape", i, shape[i]));

    const auto& offsets = value.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2) {
      fail(where + ": data_offsets is " + offsets.dump().substr(0, 64) + ", expected [begin, end]");
    }
    info.begin = read_count(name, "data_offsets", 0, offsets[0]);
    info.end = read_count(name, "data_offsets", 1, offsets[1]);

    std::uint64_t bytes = detail::dtype_size(info.type);
    for (const auto extent : info.shape) {
      if (detail::multiply_overflows(bytes, extent, bytes)) {
        fail(where + ": shape " + shape_string(info.shape) + " of " + dtype_name(info.type) +
             " needs more bytes than 64 bits can count");
      }
    }
    if (info.end < info.begin) {
      fail(where + ": data_offsets " + detail::offsets_string(info.begin, info.end) +
           " end before they begin");
    }
    if (info.end - info.begin != bytes) {
      fail(where + ": dtype " + dtype_name(info.type) + " and shape " + shape_string(info.shape) +
           " need " + std::to_string(bytes) + " bytes, but data_offsets " +
           detail::offsets_string(info.begin, info.end) + " hold " +
           std::to_string(info.end - info.begin));
    }
    if (info.end > data_size_) {
      fail(where + ": data_offsets " + detail::offsets_string(info.begin, info.end) +
           " run past the end of the data region (" + std::to_string(data_size_) +
           " bytes after the header; truncated file?)");
    }
    return info;
  }

  // The tensors must tile [0, data_size) exactly, as the reference implementation requires.
  void check_layout() const {
    std::vector<const tensor_info*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const tensor_info* a, const tensor_info* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::uint64_t covered = 0;
    const tensor_info* previous = nullptr;
    for (const tensor_info* t : by_offset) {
      if (t->begin < covered) {
        fail("tensor '" + t->name + "' (data_offsets " + detail::offsets_string(t->begin, t->end) +
             ") overlaps tensor '" + previous->name + "' (" +
             detail::offsets_string(previous->begin, previous->end) + ")");
      }
      if (t->begin > covered) {
        fail("bytes [" + std::to_string(covered) + ", " + std::to_string(t->begin) +
             ") of the data region belong to no tensor (gap before tensor '" + t->name + "')");
      }
      covered = t->end;
      previous = t;
    }
    if (covered != data_size_) {
      fail("the data region has " + std::to_string(data_size_) +
           " bytes but the tensors cover only " + std::to_string(covered) +
           " (trailing bytes after the last tensor)");
    }
  }

  std::string source_ = "<memory>";
  const unsigned char* data_ = nullptr;
  std::uint64_t header_size_ = 0;
  std::uint64_t data_size_ = 0;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
};

namespace detail {

// Keeps the mapping alive for the view that a safetensors_file parses from it; a base class so
// it is constructed first.
struct mapped_holder {
  explicit mapped_holder(const std::filesystem::path& path) : mapping(path) {}
  mapped_file mapping;
};

}  // namespace detail

/// \brief A safetensors file on disk, memory-mapped and validated (see safetensors_view).
///
/// Throws io_error when the file cannot be opened and format_error when its contents are bad.
class safetensors_file : private detail::mapped_holder, public safetensors_view {
 public:
  /// \brief Maps and validates `path`.
  /// \throws io_error when the file cannot be opened; format_error when its contents are bad.
  explicit safetensors_file(const std::filesystem::path& path)
      : detail::mapped_holder(path),
        safetensors_view(mapping.data(), mapping.size(), "'" + path.string() + "'") {}

  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  // Moving keeps the mapping's address, so the view stays valid.
  /// \brief Takes over the mapping; the view stays valid because the mapping does not move.
  safetensors_file(safetensors_file&&) noexcept = default;
  /// \brief Takes over the mapping, releasing this one's.
  safetensors_file& operator=(safetensors_file&&) noexcept = default;

  /// \brief The path the file was opened with.
  const std::filesystem::path& path() const noexcept { return mapping.path(); }
};

/// \brief Collects tensors and metadata, then writes one safetensors file.
///
/// Tensors are laid out by decreasing element size, then by name, as the reference writer does,
/// so every tensor is aligned to its element size; the header is padded with spaces to a multiple
/// of 8 bytes. write() is atomic: on any failure, including an exception from a generator, the
/// target is left as it was and no temporary file remains.
class safetensors_writer {
 public:
  /// \brief Called with bytes written so far and the total, after each tensor.
  using progress_function = std::function<void(std::uint64_t done, std::uint64_t total)>;
  /// \brief Fills exactly the tensor's byte size at `out` when the file is written.
  using fill_function = std::function<void(unsigned char* out)>;

  /// \brief Adds a `__metadata__` entry (replacing one with the same key).
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// \brief Adds a tensor from row-major values, converted now to `stored` (F16, BF16, F32 or F64).
  ///
  /// `values` holds the product of `shape` elements (may be null for an empty tensor).
  /// \throws value_error for another dtype, a repeated or reserved name ("__metadata__"), a
  ///         shape too large to address, or null values for a non-empty tensor.
  template <class T>
  void add(const std::string& name, dtype stored, std::vector<std::uint64_t> shape,
           const T* values) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "add<T>: T must be float or double");
    if (!detail::is_convertible(stored)) {
      throw value_error(std::string("safetensors_writer::add: cannot convert to ") +
                        dtype_name(stored) + " ('" + name + "'); use add_bytes");
    }
    entry& e = new_entry(name, stored, std::move(shape), values != nullptr);
    e.owned.resize(static_cast<std::size_t>(e.size));
    detail::encode(stored, values, static_cast<std::size_t>(e.size / detail::dtype_size(stored)),
                   e.owned.data());
  }

  /// \brief Adds a tensor whose little-endian bytes are copied verbatim at write time from
  ///        `bytes`, which must stay valid until then (e.g. a tensor of a mapped input file).
  /// \throws value_error for a repeated or reserved name, a shape too large to address, or null
  ///         bytes for a non-empty tensor.
  void add_bytes(const std::string& name, dtype stored, std::vector<std::uint64_t> shape,
                 const unsigned char* bytes) {
    new_entry(name, stored, std::move(shape), bytes != nullptr).borrowed = bytes;
  }

  /// \brief Adds a tensor produced at write time by `fill`, so that a large file can be written
  ///        holding one generated tensor in memory at a time.
  /// \throws value_error as add_bytes (an empty `fill` counts as no data).
  void add_generated(const std::string& name, dtype stored, std::vector<std::uint64_t> shape,
                     fill_function fill) {
    const bool has_fill = static_cast<bool>(fill);
    new_entry(name, stored, std::move(shape), has_fill).fill = std::move(fill);
  }

  /// \brief Reports progress while writing.
  void on_progress(progress_function progress) { progress_ = std::move(progress); }

  /// \brief Bytes of tensor data the file will hold.
  std::uint64_t data_size() const {
    std::uint64_t total = 0;
    for (const auto& e : entries_) total += e.size;
    return total;
  }

  /// \brief The whole file image in memory.
  /// \throws value_error when a name or metadata string is not valid UTF-8.
  std::vector<unsigned char> serialize() const {
    std::vector<unsigned char> out;
    emit([&](const unsigned char* data, std::size_t size) {
      out.insert(out.end(), data, data + size);
    });
    return out;
  }

  /// \brief Writes the file atomically (temporary file in the same directory, then rename).
  /// \throws io_error when writing fails; value_error as serialize(); whatever a generator
  ///         throws. The target is then unchanged.
  void write(const std::filesystem::path& path) const {
    detail::atomic_file file(path);
    write_to(file);
    file.commit();
  }

  /// \brief Writes the image into `file` without committing it, so that several files can be
  ///        committed together once all of them are complete.
  /// \throws io_error when writing fails; value_error as serialize().
  void write_to(detail::atomic_file& file) const {
    emit([&](const unsigned char* data, std::size_t size) { file.write(data, size); });
  }

 private:
  struct entry {
    std::string name;
    dtype type = dtype::f32;
    std::vector<std::uint64_t> shape;
    std::uint64_t size = 0;
    std::vector<unsigned char> owned;
    const unsigned char* borrowed = nullptr;
    fill_function fill;
  };

  entry& new_entry(const std::string& name, dtype stored, std::vector<std::uint64_t> shape,
                   bool has_data) {
    if (name == "__metadata__")
      throw value_error("safetensors_writer: '__metadata__' is not a tensor name");
    if (names_.count(name) != 0) {
      throw value_error("safetensors_writer: tensor '" + name + "' added twice");
    }
    std::uint64_t size = detail::dtype_size(stored);
    for (const auto extent : shape) {
      if (detail::multiply_overflows(size, extent, size) ||
          size > std::numeric_limits<std::size_t>::max()) {
        throw value_error("safetensors_writer: tensor '" + name + "' with shape " +
                          shape_string(shape) + " is too large");
      }
    }
    if (size > 0 && !has_data) {
      throw value_error("safetensors_writer: tensor '" + name + "' has " + std::to_string(size) +
                        " bytes but no data");
    }
    names_.insert(name);
    entry e;
    e.name = name;
    e.type = stored;
    e.shape = std::move(shape);
    e.size = size;
    entries_.push_back(std::move(e));
    return entries_.back();
  }

  std::vector<const entry*> layout() const {
    std::vector<const entry*> order;
    for (const auto& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const entry* a, const entry* b) {
      const auto sa = detail::dtype_size(a->type), sb = detail::dtype_size(b->type);
      return sa != sb ? sa > sb : a->name < b->name;
    });
    return order;
  }

  std::string header(const std::vector<const entry*>& order) const {
    nlohmann::json json = nlohmann::json::object();
    if (!metadata_.empty()) json["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const entry* e : order) {
      json[e->name] = {{"dtype", dtype_name(e->type)},
                       {"shape", e->shape},
                       {"data_offsets", {offset, offset + e->size}}};
      offset += e->size;
    }
    std::string text;
    try {
      text = json.dump();
    } catch (const nlohmann::json::type_error& error) {
      throw value_error(
          std::string("safetensors_writer: a tensor name or metadata string is not valid UTF-8: ") +
          error.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  }

  template <class Sink>
  void emit(Sink&& sink) const {
    const auto order = layout();
    const std::string text = header(order);
    unsigned char length[8];
    detail::store_le(text.size(), 8, length);
    sink(length, 8);
    sink(reinterpret_cast<const unsigned char*>(text.data()), text.size());
    const std::uint64_t total = data_size();
    std::uint64_t done = 0;
    std::vector<unsigned char> scratch;
    for (const entry* e : order) {
      const auto size = static_cast<std::size_t>(e->size);
      if (e->fill) {
        scratch.assign(size, 0);
        e->fill(scratch.data());
        sink(scratch.data(), size);
        scratch = {};  // release: generated tensors may be large
      } else if (e->borrowed != nullptr) {
        sink(e->borrowed, size);
      } else {
        sink(e->owned.data(), size);
      }
      done += e->size;
      if (progress_) progress_(done, total);
    }
  }

  std::vector<entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
  progress_function progress_;
};

}  // namespace vera::io
