#include <cstdio>

int main(int argc, char** argv) {
  (void)argc;
  (void)argv;
  std::fprintf(stderr, "usage: switchyard <config|train|rl|generate|data|ckpt> ...\n");
  return 2;
}
