// One error on every rank, so that no rank is left waiting in a collective for one that threw.
//
// A rank that fails alone (its file cannot be written, its checkpoint file is corrupt) must not
// just throw: the others would wait for it in the next collective until the watchdog ends the
// job (on NCCL, in ncclCommFinalize, without a word). Instead every rank reaches an agreement
// point with its own verdict, and all of them raise together, an AgreedError (core/error.h).
// The same goes for what every rank checks alike (the config): all of them fail, and the program
// says the message once (report_agreed_error) and ends without MPI_Abort.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "comm/communicator.h"
#include "core/error.h"

namespace ringattn {

// Collective over `comm`, which must span every rank of the job (an all-gather of one flag per
// rank). `error` is this rank's failure, "" when it succeeded. Returns when no rank failed;
// otherwise raises an AgreedError on every rank: a failing rank its own `error`, the others
// `others(r)`, r the lowest failing rank (a message that points at that rank's, which says why).
void raise_if_any_rank_failed(Communicator& comm, const std::string& error,
                              const std::function<std::string(int failed_rank)>& others);

// How long a rank waits at an agreement over MPI_COMM_WORLD (before a command has armed the
// watchdog with its config's comm.timeout_s) for the others to arrive, before the job is ended.
inline constexpr double kAgreementTimeoutS = 300;

// The same with this rank's error as it was raised (null when it succeeded), which keeps its
// file and line: over `comm` (spanning every rank of the job), or, with comm null, over
// MPI_COMM_WORLD, for work before any communicator exists.
void raise_if_any_rank_failed(Communicator* comm, const Error* mine,
                              const std::function<std::string(int failed_rank)>& others);

// Runs `work` on every rank and agrees on its outcome (collective over `comm`, or MPI_COMM_WORLD
// when null): its result when no rank raised an Error, else an AgreedError on every rank; `what`
// names the work in the other ranks' message ("rank 2 failed while reading the config (its
// message says why)"). Only for work without collectives of its own (a rank that failed would
// meet the others' collective with the agreement's). Other exceptions pass through as they are
// (the program aborts the job on them).
template <typename Work>
auto agreed_across_ranks(Communicator* comm, const char* what, Work&& work) {
  using Result = decltype(work());
  std::optional<Error> failed;
  std::conditional_t<std::is_void_v<Result>, bool, std::optional<Result>> result{};
  try {
    if constexpr (std::is_void_v<Result>)
      work();
    else
      result.emplace(work());
  } catch (const AgreedError&) {
    throw;  // already agreed on by every rank
  } catch (const Error& e) {
    failed = e;
  }
  raise_if_any_rank_failed(comm, failed ? &*failed : nullptr, [what](int r) {
    return "rank " + std::to_string(r) + " failed while " + what + " (its message says why)";
  });
  if constexpr (!std::is_void_v<Result>) return std::move(*result);
}
template <typename Work>
auto agreed_across_ranks(const char* what, Work&& work) {
  return agreed_across_ranks(nullptr, what, std::forward<Work>(work));
}

// What the program does with an AgreedError (apps/main.cpp), collective over MPI_COMM_WORLD
// (every rank has one): each distinct message of a failing rank is logged once, by the lowest
// rank that has it (N ranks that fail alike print one line, not N), and rank 0 logs its pointer
// at the failing rank when it did not fail itself. Bounded by `timeout_s` (> 0) under the
// watchdog, should a rank not arrive after all.
void report_agreed_error(const AgreedError& e, double timeout_s);

}  // namespace ringattn
