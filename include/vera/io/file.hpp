// SPDX-License-Identifier: Apache-2.0
// Read-only memory-mapped files, and files written atomically (temporary file, then rename).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#if __has_include(<sys/mman.h>) && __has_include(<unistd.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define VERA_DETAIL_POSIX_FILES 1
#else
#include <fstream>
#define VERA_DETAIL_POSIX_FILES 0
#endif

#include "vera/io/error.hpp"

namespace vera::io {

namespace detail {

inline std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

inline std::string system_message(int code) { return std::system_category().message(code); }

/// \brief A whole file mapped read-only into memory (POSIX mmap; a plain read elsewhere).
///
/// The bytes stay valid for the object's lifetime. Another process truncating the file while it
/// is mapped makes later reads fault, as with any mapped file; vera never writes files in place.
class mapped_file {
 public:
  mapped_file() = default;

  /// \brief Maps `path`; throws io_error when it cannot be opened or is not a regular file.
  explicit mapped_file(const std::filesystem::path& path) : path_(path) {
#if VERA_DETAIL_POSIX_FILES
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      throw io_error("cannot open " + detail::quoted(path) + ": " + detail::system_message(errno));
    struct stat info {};
    if (::fstat(fd, &info) != 0) {
      const int code = errno;
      ::close(fd);
      throw io_error("cannot stat " + detail::quoted(path) + ": " + detail::system_message(code));
    }
    if (!S_ISREG(info.st_mode)) {
      ::close(fd);
      throw io_error(detail::quoted(path) + " is not a regular file");
    }
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ > 0) {
      void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (address == MAP_FAILED) {
        const int code = errno;
        ::close(fd);
        throw io_error("cannot map " + detail::quoted(path) + ": " + detail::system_message(code));
      }
      data_ = static_cast<const unsigned char*>(address);
    }
    ::close(fd);  // the mapping keeps the file alive
#else
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error("cannot open " + detail::quoted(path));
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw io_error("cannot read the size of " + detail::quoted(path) + ": " + ec.message());
    copy_.resize(static_cast<std::size_t>(size));
    in.read(reinterpret_cast<char*>(copy_.data()), static_cast<std::streamsize>(copy_.size()));
    if (!in) throw io_error("cannot read " + detail::quoted(path));
    data_ = copy_.data();
    size_ = copy_.size();
#endif
  }

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  /// \brief Takes over the mapping; `other` is left empty.
  mapped_file(mapped_file&& other) noexcept { swap(other); }
  /// \brief Takes over the mapping, releasing this one's; `other` is left empty.
  mapped_file& operator=(mapped_file&& other) noexcept {
    mapped_file(std::move(other)).swap(*this);
    return *this;
  }
  ~mapped_file() {
#if VERA_DETAIL_POSIX_FILES
    if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
#endif
  }

  /// \brief The file's bytes (null for an empty file or a default-constructed object).
  const unsigned char* data() const noexcept { return data_; }
  /// \brief Size of the file in bytes.
  std::size_t size() const noexcept { return size_; }
  /// \brief The path the file was opened with.
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  void swap(mapped_file& other) noexcept {
    std::swap(path_, other.path_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
#if !VERA_DETAIL_POSIX_FILES
    std::swap(copy_, other.copy_);
    if (!copy_.empty()) data_ = copy_.data();
    if (!other.copy_.empty()) other.data_ = other.copy_.data();
#endif
  }

  std::filesystem::path path_;
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
#if !VERA_DETAIL_POSIX_FILES
  std::vector<unsigned char> copy_;
#endif
};

/// \brief Writes a file so that readers see either the old file or the complete new one.
///
/// Data goes to a temporary file next to the target; commit() flushes it to disk and renames it
/// over the target. If commit() is never reached (an exception, a failed check), the destructor
/// removes the temporary file, so a failed write leaves nothing behind.
class atomic_file {
 public:
  /// \brief Creates the temporary file in the target's directory; throws io_error on failure.
  explicit atomic_file(std::filesystem::path target) : target_(std::move(target)) {
    static std::atomic<unsigned> counter{0};
    for (int attempt = 0; attempt < 100; ++attempt) {
      temporary_ = target_;
      temporary_ += ".tmp." + std::to_string(process_id()) + "." + std::to_string(counter++);
#if VERA_DETAIL_POSIX_FILES
      // Mode 0666 lets the umask decide, as for any newly created file.
      fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      if (errno != EEXIST) {
        throw io_error("cannot create " + detail::quoted(temporary_) + ": " +
                       detail::system_message(errno));
      }
#else
      if (std::filesystem::exists(temporary_)) continue;
      file_ = std::fopen(temporary_.string().c_str(), "wb");
      if (file_ != nullptr) return;
      throw io_error("cannot create " + detail::quoted(temporary_));
#endif
    }
    throw io_error("cannot create a temporary file next to " + detail::quoted(target_));
  }

  atomic_file(const atomic_file&) = delete;
  atomic_file& operator=(const atomic_file&) = delete;

  ~atomic_file() { abandon(); }

  /// \brief Appends `size` bytes; throws io_error (e.g. disk full).
  void write(const void* data, std::size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
#if VERA_DETAIL_POSIX_FILES
    while (size > 0) {
      const std::size_t chunk = size < (std::size_t{1} << 30) ? size : (std::size_t{1} << 30);
      const ::ssize_t written = ::write(fd_, bytes, chunk);
      if (written < 0) {
        if (errno == EINTR) continue;
        throw io_error("cannot write " + detail::quoted(temporary_) + ": " +
                       detail::system_message(errno));
      }
      bytes += written;
      size -= static_cast<std::size_t>(written);
    }
#else
    if (size > 0 && std::fwrite(bytes, 1, size, file_) != size) {
      throw io_error("cannot write " + detail::quoted(temporary_));
    }
#endif
  }

  /// \brief Flushes the data to disk and renames the temporary file over the target.
  /// \throws io_error when flushing, closing or renaming fails (the target is then unchanged).
  void commit() {
#if VERA_DETAIL_POSIX_FILES
    if (::fsync(fd_) != 0) {
      throw io_error("cannot flush " + detail::quoted(temporary_) + ": " +
                     detail::system_message(errno));
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      throw io_error("cannot close " + detail::quoted(temporary_) + ": " +
                     detail::system_message(errno));
    }
    if (std::rename(temporary_.c_str(), target_.c_str()) != 0) {
      throw io_error("cannot rename " + detail::quoted(temporary_) + " to " +
                     detail::quoted(target_) + ": " + detail::system_message(errno));
    }
#else
    std::FILE* file = file_;
    file_ = nullptr;
    if (std::fclose(file) != 0) throw io_error("cannot close " + detail::quoted(temporary_));
    std::error_code ec;
    std::filesystem::rename(temporary_, target_, ec);
    if (ec) throw io_error("cannot rename " + detail::quoted(temporary_) + ": " + ec.message());
#endif
    committed_ = true;
  }

  /// \brief The path commit() renames the temporary file to.
  const std::filesystem::path& target() const noexcept { return target_; }

 private:
  static long process_id() {
#if VERA_DETAIL_POSIX_FILES
    return static_cast<long>(::getpid());
#else
    return 0;
#endif
  }

  void abandon() noexcept {
    if (committed_) return;
#if VERA_DETAIL_POSIX_FILES
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
#else
    if (file_ != nullptr) std::fclose(file_);
    file_ = nullptr;
#endif
    std::error_code ignored;
    std::filesystem::remove(temporary_, ignored);
  }

  std::filesystem::path target_;
  std::filesystem::path temporary_;
#if VERA_DETAIL_POSIX_FILES
  int fd_ = -1;
#else
  std::FILE* file_ = nullptr;
#endif
  bool committed_ = false;
};

}  // namespace detail

/// \brief Reads a whole text file of at most `max_size` bytes; throws io_error, or format_error
///        when the file is larger (a configuration file is small; a huge one is hostile).
inline std::string read_text_file(const std::filesystem::path& path, std::size_t max_size) {
  const detail::mapped_file file(path);
  if (file.size() > max_size) {
    throw format_error(detail::quoted(path) + " is " + std::to_string(file.size()) +
                       " bytes, more than the " + std::to_string(max_size) + " accepted");
  }
  if (file.size() == 0) return {};
  return std::string(reinterpret_cast<const char*>(file.data()), file.size());
}

}  // namespace vera::io
