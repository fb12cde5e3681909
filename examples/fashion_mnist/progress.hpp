// SPDX-License-Identifier: Apache-2.0
// A one-line progress bar with ETA on stderr; on a non-terminal only the final line is printed.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace fashion {

class progress {
 public:
  using clock = std::chrono::steady_clock;

  progress(std::string label, long total)
      : label_(std::move(label)), total_(total), start_(clock::now()), last_draw_(start_),
        interactive_(isatty(STDERR_FILENO) != 0) {}

  double elapsed() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

  /// \brief `done` of `total` units finished; redraws at most ten times a second.
  void update(long done, const std::string& status) {
    if (!interactive_) return;
    const auto now = clock::now();
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw(done, status, false);
  }

  /// \brief Prints the final line (also on a non-terminal) and ends it.
  void finish(const std::string& status) { draw(total_, status, true); }

 private:
  void draw(long done, const std::string& status, bool final_line) {
    const int width = 24;
    const double fraction = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
    const int filled = static_cast<int>(fraction * width + 0.5);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, '.');
    const double seconds = elapsed();
    char eta[32] = "";
    if (!final_line && fraction > 0) {
      std::snprintf(eta, sizeof eta, "  eta %.0fs", seconds * (1.0 - fraction) / fraction);
    }
    std::fprintf(stderr, "%s%-26s [%s] %3d%%  %6.1fs%s  %s%s", interactive_ ? "\r\033[K" : "",
                 label_.c_str(), bar.c_str(), static_cast<int>(fraction * 100 + 0.5), seconds, eta,
                 status.c_str(), final_line ? "\n" : "");
    std::fflush(stderr);
  }

  std::string label_;
  long total_;
  clock::time_point start_;
  clock::time_point last_draw_;
  bool interactive_;
};

}  // namespace fashion
