// One error on every rank, so that no rank is left waiting in a collective for one that threw.
//
// A rank that fails alone (its file cannot be written, its checkpoint file is corrupt) must not
// just throw: the others would wait for it in the next collective until the watchdog ends the
// job (on NCCL, in ncclCommFinalize, without a word). Instead every rank reaches an agreement
// point with its own verdict, and all of them raise together.
#pragma once

#include <functional>
#include <string>

#include "comm/communicator.h"

namespace ringattn {

// Collective over `comm` (an all-gather of one flag per rank). `error` is this rank's failure,
// "" when it succeeded. Returns when no rank failed; otherwise raises an Error on every rank: a
// failing rank its own `error`, the others `others(r)`, r the lowest failing rank (a message
// that points at that rank's, which says why).
void raise_if_any_rank_failed(Communicator& comm, const std::string& error,
                              const std::function<std::string(int failed_rank)>& others);

}  // namespace ringattn
