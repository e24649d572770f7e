// Minimal TensorFlow Lite Micro program for a SimpleUNet model exported with `simpleunet-export --formats tflm`:
// reads one RGB image already resized to the model's input size (raw HxWx3 bytes), segments it and writes the mask
// as a PGM. On a board, replace the file I/O with the camera buffer and your display/UART.
//
// Build against the TFLite Micro sources (https://github.com/tensorflow/tflite-micro), see README.md here.
#include <cmath>
#include <cstdio>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "simpleunet8_kvasir_112_int8.h"

#define M(x) SIMPLEUNET8_KVASIR_112_INT8_##x
constexpr int kH = M(INPUT_HEIGHT), kW = M(INPUT_WIDTH);
alignas(16) static uint8_t arena[M(ARENA_BYTES)];
static uint8_t rgb[kH * kW * 3], mask[kH * kW];

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IMAGE.rgb MASK.pgm  (IMAGE: %dx%d RGB bytes)\n", argv[0], kW, kH);
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (!f || std::fread(rgb, 1, sizeof(rgb), f) != sizeof(rgb)) {
    std::fprintf(stderr, "error: %s is not %zu bytes of %dx%d RGB\n", argv[1], sizeof(rgb), kW, kH);
    return 2;
  }
  std::fclose(f);

  const tflite::Model* model = tflite::GetModel(simpleunet8_kvasir_112_int8_model);
  static tflite::MicroMutableOpResolver<5> ops;  // the model's op list (manifest.json "ops")
  ops.AddConv2D();
  ops.AddMaxPool2D();
  ops.AddResizeBilinear();
  ops.AddConcatenation();
  ops.AddLogistic();
  static tflite::MicroInterpreter interpreter(model, ops, arena, sizeof(arena));
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    std::fprintf(stderr, "error: the arena of %d bytes is too small\n", M(ARENA_BYTES));
    return 1;
  }

  // (rgb / 255 - mean) / std, quantized with the input tensor's scale and zero point (NHWC, int8).
  int8_t* in = interpreter.input(0)->data.int8;
  for (int i = 0; i < kH * kW * 3; ++i) {
    const int c = i % 3;
    const float x = (rgb[i] / 255.0f - simpleunet8_kvasir_112_int8_mean[c]) / simpleunet8_kvasir_112_int8_std[c];
    const long q = std::lround(x / M(INPUT_SCALE)) + M(INPUT_ZERO_POINT);
    in[i] = static_cast<int8_t>(q < -128 ? -128 : q > 127 ? 127 : q);
  }
  if (interpreter.Invoke() != kTfLiteOk) return 1;

  const int8_t* out = interpreter.output(0)->data.int8;
  int foreground = 0;
  for (int i = 0; i < kH * kW; ++i) {
    const float p = (out[i] - M(OUTPUT_ZERO_POINT)) * M(OUTPUT_SCALE);
    mask[i] = p > M(THRESHOLD) ? 255 : 0;
    foreground += mask[i] != 0;
  }
  FILE* g = std::fopen(argv[2], "wb");
  if (!g) return 1;
  std::fprintf(g, "P5\n%d %d\n255\n", kW, kH);
  std::fwrite(mask, 1, sizeof(mask), g);
  std::fclose(g);
  std::printf("%d of %d pixels foreground; arena used %zu of %d bytes\n", foreground, kH * kW,
              interpreter.arena_used_bytes(), M(ARENA_BYTES));
  return 0;
}
