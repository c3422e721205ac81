// The CPU's vendor, from CPUID leaf 0. Internal linkage: each translation unit,
// compiled for its own instruction set, keeps its own copy, which the linker
// cannot swap for another's.
#pragma once

#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace fusedrnn::cpu {

// Whether the vendor string is `name` ("GenuineIntel", "AuthenticAMD").
static inline bool cpu_vendor_is(const char* name) {
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d) == 0) return false;
  char vendor[13];
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  vendor[12] = '\0';
  return std::strcmp(vendor, name) == 0;
#else
  (void)name;
  return false;
#endif
}

}  // namespace fusedrnn::cpu
