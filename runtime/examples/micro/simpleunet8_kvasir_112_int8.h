// simpleunet8-kvasir-112_int8: SimpleUNet int8 model for TensorFlow Lite Micro (simpleunet-export --formats tflm).
// Research use only. Not a medical device; not for diagnostic use.
#ifndef SIMPLEUNET8_KVASIR_112_INT8_H_
#define SIMPLEUNET8_KVASIR_112_INT8_H_
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

extern const unsigned char simpleunet8_kvasir_112_int8_model[];
extern const size_t simpleunet8_kvasir_112_int8_model_len;  // 11248 bytes of flash

#define SIMPLEUNET8_KVASIR_112_INT8_ARENA_BYTES 207872  // smallest arena TFLite Micro accepted, measured at export
#define SIMPLEUNET8_KVASIR_112_INT8_INPUT_HEIGHT 112
#define SIMPLEUNET8_KVASIR_112_INT8_INPUT_WIDTH 112
#define SIMPLEUNET8_KVASIR_112_INT8_INPUT_CHANNELS 3  // RGB, NHWC, int8
// Preprocess: resize to 112x112 (bilinear), x = (rgb / 255 - mean) / std, then q = round(x / scale) + zero_point.
static const float simpleunet8_kvasir_112_int8_mean[3] = {0.485f, 0.456f, 0.406f};
static const float simpleunet8_kvasir_112_int8_std[3] = {0.229f, 0.224f, 0.225f};
#define SIMPLEUNET8_KVASIR_112_INT8_INPUT_SCALE 0.018658448f
#define SIMPLEUNET8_KVASIR_112_INT8_INPUT_ZERO_POINT -14
// Output: foreground probability p = (q - zero_point) * scale; mask = p > threshold.
#define SIMPLEUNET8_KVASIR_112_INT8_OUTPUT_SCALE 0.00390625f
#define SIMPLEUNET8_KVASIR_112_INT8_OUTPUT_ZERO_POINT -128
#define SIMPLEUNET8_KVASIR_112_INT8_THRESHOLD 0.35f

#ifdef __cplusplus
}
#endif
#endif  // SIMPLEUNET8_KVASIR_112_INT8_H_
