/* One-way latency of a cache line between two CPUs, in ns: the median-free mean of N round trips / 2.
 * Usage: crosscore CPU_A CPU_B. Two threads pinned to the two CPUs hand a flag back and forth.
 * Built and run by bench/crosscore.py; on a VM it tells whether the two vCPUs share a cache now. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Atomic int flag __attribute__((aligned(64)));
enum { ROUND_TRIPS = 200000 };

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *answer(void *cpu) {
    if (pin(*(int *)cpu) != 0) exit(2);
    for (int i = 0; i < ROUND_TRIPS; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) {}
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) return 1;
    int a = atoi(argv[1]), b = atoi(argv[2]);
    if (pin(a) != 0) return 2;
    pthread_t other;
    pthread_create(&other, NULL, answer, &b);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < ROUND_TRIPS; i++) {
        atomic_store_explicit(&flag, 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 0) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(other, NULL);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f\n", ns / ROUND_TRIPS / 2);
    return 0;
}
