// Every rank must run the same config. Ranks that read different config files (a copy edited on
// one node only, an MPMD launch with other --set options) would otherwise meet in mismatched
// collectives: a hang until the watchdog, or, where the shapes happen to agree, a silently wrong
// run. Rank 0's resolved config goes to every rank, and a rank whose own differs fails, naming the
// first key that differs; every rank then ends together (comm/agreed_error.h).
#pragma once

#include <string>
#include <vector>

namespace ringattn {

// Collective over MPI_COMM_WORLD. `config_json`: this rank's resolved config as JSON text (every
// key, defaults filled: JsonConfig::dump). Returns when every rank's equals rank 0's; otherwise
// raises an AgreedError on every rank.
void require_same_config_on_every_rank(const std::string& config_json);

// The same for the command line (the arguments after the program's name): flags outside the
// config (--resume, eval's --checkpoint, bench options) decide what the ranks do together too.
// Collective over MPI_COMM_WORLD; an AgreedError on every rank naming the first argument that
// differs.
void require_same_command_line(const std::vector<std::string>& args);

// "train.seq_len is 128 here and 256 on rank 0" for the first key (in rank 0's order) whose
// values differ, "" when the two configs hold the same keys and values. For the message above,
// and the tests.
std::string first_config_difference(const std::string& mine, const std::string& rank0);

}  // namespace ringattn
