// Turn run-time values into template arguments (the idea of flash-attention's static_switch.h).
#pragma once

// M_TILES_SWITCH(m, TILES, ...): TILES is the number of 8-row tiles of activations a block handles.
#define M_TILES_SWITCH(m, TILES, ...)     \
  [&] {                                   \
    if ((m) <= 8) {                       \
      constexpr int TILES = 1;            \
      return __VA_ARGS__();               \
    } else if ((m) <= 16) {               \
      constexpr int TILES = 2;            \
      return __VA_ARGS__();               \
    } else {                              \
      constexpr int TILES = 4;            \
      return __VA_ARGS__();               \
    }                                     \
  }()

// BOOL_SWITCH(cond, NAME, ...): NAME is a constexpr bool equal to cond.
#define BOOL_SWITCH(cond, NAME, ...)      \
  [&] {                                   \
    if (cond) {                           \
      constexpr bool NAME = true;         \
      return __VA_ARGS__();               \
    } else {                              \
      constexpr bool NAME = false;        \
      return __VA_ARGS__();               \
    }                                     \
  }()
