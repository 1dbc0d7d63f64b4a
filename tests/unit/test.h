/*
 * A tiny unit-test harness. Each TEST registers itself; the runner
 * (tests/unit/main.c) runs them all, or those whose names contain argv[1],
 * prints `ok NAME` / `not ok NAME` with both sides of every failed check,
 * and ends with `N passed, N failed`. Exit status 1 if any failed.
 */
#ifndef UPSEAL_TEST_H
#define UPSEAL_TEST_H

#include <stdio.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A fresh temporary directory for this test (removed at exit). */
const char *test_tmpdir(void);

#define TEST(name)                                                        \
	static void name(void);                                           \
	__attribute__((constructor)) static void name##_register(void)    \
	{                                                                 \
		test_register(#name, name);                               \
	}                                                                 \
	static void name(void)

#define CHECK(cond)                                                       \
	do {                                                              \
		if (!(cond))                                              \
			test_fail(__FILE__, __LINE__, "%s", #cond);       \
	} while (0)

#define CHECK_INT(a, b)                                                   \
	do {                                                              \
		long long a_ = (long long)(a), b_ = (long long)(b);       \
		if (a_ != b_)                                             \
			test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", \
			    #a, #b, a_, b_);                              \
	} while (0)

#define CHECK_STR(a, b)                                                   \
	do {                                                              \
		const char *a_ = (a), *b_ = (b);                          \
		if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)      \
			test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", \
			    #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
	} while (0)

/* The string a contains the string b. */
#define CHECK_CONTAINS(a, b)                                              \
	do {                                                              \
		const char *a_ = (a), *b_ = (b);                          \
		if (a_ == NULL || strstr(a_, b_) == NULL)                 \
			test_fail(__FILE__, __LINE__, "%s contains %s: \"%s\" lacks \"%s\"", \
			    #a, #b, a_ ? a_ : "(null)", b_);              \
	} while (0)

#endif
