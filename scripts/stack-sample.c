// A stack sampler for machines without gdb: stops each thread id given (ptrace), prints its
// instruction pointer and every word of the top 256 KiB of its stack that points into an executable
// mapping (candidate return addresses, innermost first) as "path offset", then lets it go.
// scripts/device-hang-probe.sh resolves the offsets with addr2line.
// Build: cc -O1 -o stack-sample scripts/stack-sample.c   Usage: stack-sample PID TID...
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>

struct map { uint64_t lo, hi, off; char path[256]; };
static struct map maps[4096];
static int nmaps;

static void load_maps(int pid) {
  char name[64];
  snprintf(name, sizeof name, "/proc/%d/maps", pid);
  FILE* f = fopen(name, "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f) && nmaps < 4096) {
    struct map m = {0};
    char perms[8] = {0};
    if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %255s", &m.lo, &m.hi, perms, &m.off, m.path) < 4) continue;
    if (perms[2] == 'x' && m.path[0] == '/') maps[nmaps++] = m;
  }
  fclose(f);
}

static const struct map* find(uint64_t a) {
  for (int i = 0; i < nmaps; ++i)
    if (a >= maps[i].lo && a < maps[i].hi) return &maps[i];
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s PID TID...\n", argv[0]); return 2; }
  const int pid = atoi(argv[1]);
  load_maps(pid);
  for (int t = 2; t < argc; ++t) {
    const int tid = atoi(argv[t]);
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0 || ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) {
      printf("thread %d: ptrace: %s\n", tid, strerror(errno));
      continue;
    }
    int status;
    waitpid(tid, &status, __WALL);
    struct user_regs_struct r;
    ptrace(PTRACE_GETREGS, tid, 0, &r);
    static uint64_t stack[32768];
    struct iovec local = {stack, sizeof stack}, remote = {(void*)r.rsp, sizeof stack};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    ptrace(PTRACE_DETACH, tid, 0, 0);
    printf("thread %d\n", tid);
    const struct map* m = find(r.rip);
    printf("  ip %s 0x%lx\n", m ? m->path : "?", (unsigned long)(m ? r.rip - m->lo + m->off : r.rip));
    int shown = 0;
    for (ssize_t i = 0; got > 0 && i < got / 8 && shown < 24; ++i) {
      const struct map* c = find(stack[i]);
      if (!c) continue;
      printf("  sp+%zd %s 0x%lx\n", i * 8, c->path, stack[i] - c->lo + c->off);
      ++shown;
    }
  }
  return 0;
}
