// A GPU timeline of any CUDA program, without changing it: every kernel, copy and memset the
// GPU ran, and every CUDA runtime and driver call the host made, with their times (ns, one
// clock) and the correlation id that ties a launch to its kernel. For when the per-region
// CUDA events of train.profile_step are not enough: where the GPU sits idle, and whether the
// host was late to issue the next piece of work or waiting for the GPU.
//
// The CUDA driver loads it at start-up (its injection hook, no relinking):
//   SY_TRACE_OUT=/tmp/trace.csv CUDA_INJECTION64_PATH=build-dev/libsy_cupti_trace.so <program>
// then bench/trace_report.py /tmp/trace.csv summarises the steps. The CSV:
//   kind,start_ns,end_ns,stream_or_thread,correlation,name
// with kind one of kernel, memcpy, memset (stream id) or runtime, driver (host thread id).
// CUPTI fills 8 MiB buffers; each full one is written out as it comes back, the rest at exit.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace {

constexpr size_t kBufferBytes = size_t{8} << 20;

std::mutex g_mutex;
std::FILE* g_file = nullptr;  // written as CUPTI hands over each full buffer
size_t g_records = 0;
bool g_ok = true;

#define TRACE_CHECK(expr)                                                  \
  do {                                                                     \
    CUptiResult r_ = (expr);                                               \
    if (r_ != CUPTI_SUCCESS) {                                             \
      const char* s_ = nullptr;                                            \
      cuptiGetResultString(r_, &s_);                                       \
      std::fprintf(stderr, "cupti_trace: %s: %s\n", #expr, s_ ? s_ : "?"); \
      g_ok = false;                                                        \
    }                                                                      \
  } while (0)

// Demangled, without the argument list (templates stay), commas made safe for the CSV.
std::string kernel_name(const char* mangled) {
  if (mangled == nullptr) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && d ? d : mangled;
  std::free(d);
  // Cut the parameter list: the last top-level '(' ... ')'.
  int depth = 0;
  for (size_t i = name.size(); i-- > 0;) {
    if (name[i] == ')') ++depth;
    if (name[i] == '(' && --depth == 0) {
      name.resize(i);
      break;
    }
  }
  for (char& c : name)
    if (c == ',' || c == '\n') c = ';';
  return name;
}

std::string api_name(CUpti_CallbackDomain domain, CUpti_CallbackId cbid) {
  const char* name = nullptr;
  if (cuptiGetCallbackName(domain, cbid, &name) != CUPTI_SUCCESS || name == nullptr)
    return "cbid" + std::to_string(cbid);
  return name;
}

void add(const char* kind, uint64_t start, uint64_t end, uint64_t where, uint32_t corr,
         const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(g_file, "%s,%llu,%llu,%llu,%u,%s\n", kind, static_cast<unsigned long long>(start),
               static_cast<unsigned long long>(end), static_cast<unsigned long long>(where), corr,
               name.c_str());
  ++g_records;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        add("kernel", k->start, k->end, k->streamId, k->correlationId, kernel_name(k->name));
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        add("memcpy", m->start, m->end, m->streamId, m->correlationId,
            "copy kind " + std::to_string(m->copyKind) + " " + std::to_string(m->bytes) + " B");
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
        add("memset", m->start, m->end, m->streamId, m->correlationId,
            "memset " + std::to_string(m->bytes) + " B");
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
      case CUPTI_ACTIVITY_KIND_DRIVER: {
        const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(record);
        const bool runtime = record->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
        add(runtime ? "runtime" : "driver", a->start, a->end, a->threadId, a->correlationId,
            api_name(runtime ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid));
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
}

// At exit: the records still in CUPTI's buffers, then the file closed.
void finish_trace() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fclose(g_file);
  std::fprintf(stderr, "cupti_trace: %zu records%s\n", g_records,
               g_ok ? "" : " (some CUPTI calls failed, see above)");
}

}  // namespace

// The driver calls this once, when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection(void) {
  const char* path = std::getenv("SY_TRACE_OUT");
  if (path == nullptr || *path == '\0') path = "cupti_trace.csv";
  g_file = std::fopen(path, "w");
  if (g_file == nullptr) {
    std::fprintf(stderr, "cupti_trace: cannot write %s; not tracing\n", path);
    return 1;
  }
  std::fprintf(g_file, "kind,start_ns,end_ns,stream_or_thread,correlation,name\n");
  TRACE_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
  for (CUpti_ActivityKind kind :
       {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
        CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME, CUPTI_ACTIVITY_KIND_DRIVER}) {
    TRACE_CHECK(cuptiActivityEnable(kind));
  }
  std::atexit(finish_trace);
  return 1;
}
