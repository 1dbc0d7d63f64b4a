#include "test.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#define TESTS_MAX 512

static struct {
	const char *name;
	test_fn fn;
} tests[TESTS_MAX];
static int ntests;
static bool failed;
static char tmpdir[256];

void test_register(const char *name, test_fn fn)
{
	if (ntests == TESTS_MAX) {
		fprintf(stderr, "too many tests\n");
		exit(2);
	}
	tests[ntests].name = name;
	tests[ntests].fn = fn;
	ntests++;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stdout, "  %s:%d: check failed: ", file, line);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	failed = true;
}

const char *test_tmpdir(void)
{
	if (tmpdir[0] == '\0') {
		const char *base = getenv("TMPDIR");
		snprintf(tmpdir, sizeof tmpdir, "%s/upseal-unit-XXXXXX",
		    base ? base : "/tmp");
		if (mkdtemp(tmpdir) == NULL) {
			perror("mkdtemp");
			exit(2);
		}
	}
	return tmpdir;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(int argc, char **argv)
{
	int passed = 0, nfailed = 0;

	/* Registration order follows link order; sort for a stable listing. */
	qsort(tests, (size_t)ntests, sizeof tests[0], by_name);
	for (int i = 0; i < ntests; i++) {
		if (argc > 1 && strstr(tests[i].name, argv[1]) == NULL)
			continue;
		failed = false;
		tests[i].fn();
		printf("%s %s\n", failed ? "not ok" : "ok", tests[i].name);
		fflush(stdout);
		if (failed)
			nfailed++;
		else
			passed++;
	}
	if (tmpdir[0] != '\0') {
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", tmpdir);
	}
	printf("unit: %d passed, %d failed\n", passed, nfailed);
	return nfailed ? 1 : 0;
}
