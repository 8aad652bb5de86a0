/* What bridge/_window.c offers other C modules (bridge/_lane.c), through the capsule
 * bridge._window._API: a dedupe window's seen_or_add without a Python call. */
#ifndef BRIDGE_WINDOW_H
#define BRIDGE_WINDOW_H

#define WINDOW_API "bridge._window._API"

typedef struct {
    PyTypeObject *type; /* bridge._window.Window: the only objects seen_or_add takes */
    /* 1: seen before; 0: new, now remembered; -1: error set. */
    int (*seen_or_add)(PyObject *window, unsigned long long high, unsigned long long low);
} WindowAPI;

#endif
