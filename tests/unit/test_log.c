#include "test.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"

/*
 * Run emit with stderr sent to a temp file and return what it wrote
 * (malloc'd, NUL-terminated; NULL on a set-up error, reported).
 */
static char *capture(void (*emit)(void))
{
	char path[300];
	snprintf(path, sizeof path, "%s/log.out", test_tmpdir());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int saved = dup(STDERR_FILENO);
	if (fd < 0 || saved < 0 || dup2(fd, STDERR_FILENO) < 0) {
		test_fail(__FILE__, __LINE__, "cannot redirect stderr");
		return NULL;
	}
	emit();
	dup2(saved, STDERR_FILENO);
	close(saved);
	off_t size = lseek(fd, 0, SEEK_END);
	char *out = calloc(1, (size_t)size + 1);
	if (out == NULL || pread(fd, out, (size_t)size, 0) != size) {
		test_fail(__FILE__, __LINE__, "cannot read the captured output");
		free(out);
		out = NULL;
	}
	close(fd);
	unlink(path);
	return out;
}

/* One line, ending in its only "\n", no longer than a log line may be. */
static bool one_line(const char *s)
{
	size_t len = strlen(s);
	return len > 0 && len <= LOG_LINE_MAX && s[len - 1] == '\n' &&
	    strchr(s, '\n') == s + len - 1;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	    (c >= 'A' && c <= 'F');
}

/*
 * Bytes of a complete UTF-8 sequence starting at s (lead byte >= 0x80),
 * 0 if it is cut or malformed.
 */
static size_t utf8_seq(const unsigned char *s)
{
	size_t n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

/*
 * A flat JSON object line as log.c writes them: {"k":v,...}\n where v is
 * a string, a number, true or false. Checks the structure, the escapes
 * and that every string is whole UTF-8; explains a failure in why.
 */
static bool flat_json(const char *line, const char **why)
{
	const unsigned char *p = (const unsigned char *)line;
	*why = "does not start with {";
	if (*p++ != '{')
		return false;
	for (bool first = true;; first = false) {
		if (*p == '}')
			break;
		*why = "no , between fields";
		if (!first && *p++ != ',')
			return false;
		/* The key and the value: a string, or a bare word. */
		for (int part = 0; part < 2; part++) {
			if (part == 1 && *p != '"') {
				*why = "a bare value is not a number, true or false";
				size_t n = strspn((const char *)p, "0123456789-");
				if (n == 0 && strncmp((const char *)p, "true", 4) == 0)
					n = 4;
				else if (n == 0 && strncmp((const char *)p, "false", 5) == 0)
					n = 5;
				if (n == 0)
					return false;
				p += n;
				break;
			}
			*why = "a key is not a string";
			if (*p++ != '"')
				return false;
			while (*p != '"') {
				*why = "a string is not closed";
				if (*p == '\0' || *p == '\n')
					return false;
				*why = "a control character in a string";
				if (*p < 0x20)
					return false;
				if (*p == '\\') {
					p++;
					*why = "a bad escape";
					if (*p == 'u') {
						for (int i = 1; i <= 4; i++)
							if (!is_hex((char)p[i]))
								return false;
						p += 5;
					} else if (*p != '\0' && strchr("\"\\/bfnrt", *p)) {
						p++;
					} else {
						return false;
					}
				} else if (*p >= 0x80) {
					*why = "a cut UTF-8 sequence";
					size_t n = utf8_seq(p);
					if (n == 0)
						return false;
					p += n;
				} else {
					p++;
				}
			}
			p++;
			*why = "no : after a key";
			if (part == 0 && *p++ != ':')
				return false;
		}
	}
	*why = "does not end with }\\n";
	return strcmp((const char *)p, "}\n") == 0;
}

static char *long_text(size_t n, const char *unit)
{
	size_t u = strlen(unit);
	char *s = malloc(n * u + 1);
	if (s == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		memcpy(s + i * u, unit, u);
	s[n * u] = '\0';
	return s;
}

/* The field whose value is cut, between two that are not. */
static const char *cut_unit;
static size_t cut_count;
static const char *cut_prefix;	/* fields of this length go first */

static void emit_long(void)
{
	char *v = long_text(cut_count, cut_unit);
	struct log_line l;
	log_begin(&l, LOG_ERROR, "long_line");
	log_str(&l, "tunnel", "app");
	if (cut_prefix != NULL)
		log_str(&l, "pad", cut_prefix);
	log_str(&l, "msg", v);
	log_u64(&l, "after", 12345);
	log_end(&l);
	/* The next line must start on a line of its own. */
	log_msg(LOG_ERROR, "next_line", "short");
	free(v);
}

/* Split the capture into its two lines; both checked for one "\n". */
static bool two_lines(char *out, char **first, char **second)
{
	char *nl = out != NULL ? strchr(out, '\n') : NULL;
	if (nl == NULL)
		return false;
	*first = out;
	*second = nl + 1;
	return true;
}

/*
 * Log a line whose msg is count times unit and check both it and the
 * line after it. The line must be cut if must_cut; a line that is not cut
 * must end with its last field.
 */
static void check_cut(bool json, const char *unit, size_t count,
    const char *prefix, bool must_cut)
{
	log_setup(LOG_INFO, json);
	cut_unit = unit;
	cut_count = count;
	cut_prefix = prefix;
	char *out = capture(emit_long);
	log_setup(LOG_INFO, false);
	char *first, *second;
	if (!two_lines(out, &first, &second)) {
		test_fail(__FILE__, __LINE__, "no line end in \"%.80s...\"",
		    out ? out : "(null)");
		free(out);
		return;
	}
	char save = second[0];
	second[0] = '\0';
	if (!one_line(first))
		test_fail(__FILE__, __LINE__, "the cut line is %zu bytes or "
		    "has no \\n of its own", strlen(first));
	second[0] = save;
	CHECK(one_line(second));
	if (json) {
		CHECK(strncmp(second, "{\"ts\":", 6) == 0);
		CHECK_CONTAINS(second, "\"event\":\"next_line\"");
		second[0] = '\0';	/* the cut line alone */
		const char *why = "";
		if (!flat_json(first, &why))
			test_fail(__FILE__, __LINE__, "unit \"%s\" x%zu: %s: "
			    "...%s", unit, count, why,
			    first + (strlen(first) > 80 ? strlen(first) - 80 : 0));
		bool cut = strstr(first, ",\"truncated\":true}\n") != NULL;
		CHECK(cut || !must_cut);
		CHECK(cut || strstr(first, ",\"after\":12345}\n") != NULL);
		CHECK_CONTAINS(first, "\"tunnel\":\"app\"");
	} else {
		CHECK(strncmp(second, "ts=", 3) == 0);
		CHECK_CONTAINS(second, "event=next_line");
		second[0] = '\0';
		size_t len = strlen(first);
		bool cut = len > 16 &&
		    strcmp(first + len - 16, " truncated=true\n") == 0;
		CHECK(cut || !must_cut);
		CHECK(cut || (len > 13 &&
		    strcmp(first + len - 13, " after=12345\n") == 0));
		/* Quotes balanced: a cut quoted value is closed. */
		int quotes = 0;
		for (const char *p = first; *p; p++) {
			if (*p == '\\' && p[1] != '\0')
				p++;
			else if (*p == '"')
				quotes++;
		}
		if (quotes % 2 != 0)
			test_fail(__FILE__, __LINE__, "unit \"%s\": %d quotes in "
			    "...%s", unit, quotes, first + (len > 80 ? len - 80 : 0));
		CHECK_CONTAINS(first, "tunnel=app");
	}
	free(out);
}

TEST(log_cut_text)
{
	check_cut(false, "a", 3 * LOG_LINE_MAX, NULL, true);	/* bare value */
	check_cut(false, "a b", LOG_LINE_MAX, NULL, true);	/* quoted value */
	check_cut(false, "\"", LOG_LINE_MAX, NULL, true);	/* escapes */
}

TEST(log_cut_json)
{
	check_cut(true, "a", 3 * LOG_LINE_MAX, NULL, true);
	check_cut(true, "\"", LOG_LINE_MAX, NULL, true);	/* \" */
	check_cut(true, "\x01", LOG_LINE_MAX, NULL, true);	/* \u0001 */
	check_cut(true, "\xc3\xa9", LOG_LINE_MAX, NULL, true);	/* é */
	check_cut(true, "\xe2\x82\xac", LOG_LINE_MAX, NULL, true);	/* € */
}

/* Every offset of the cut against the escapes and the UTF-8 sequences. */
TEST(log_cut_every_offset)
{
	char pad[16];
	for (size_t i = 0; i < sizeof pad - 1; i++) {
		memset(pad, 'p', i);
		pad[i] = '\0';
		check_cut(true, "\x01\"", LOG_LINE_MAX, pad, true);
		check_cut(false, "\x01\"", LOG_LINE_MAX, pad, true);
		check_cut(true, "\xe2\x82\xac", LOG_LINE_MAX, pad, true);
	}
}

/*
 * msg ends at every offset around the limit, so that the cut also falls
 * in the key or the value of the last field (a number): no key is left
 * without its value.
 */
TEST(log_cut_last_field)
{
	for (size_t n = LOG_LINE_MAX - 160; n <= LOG_LINE_MAX; n++) {
		check_cut(true, "a", n, NULL, false);
		check_cut(false, "a", n, NULL, false);
	}
}

/* A line that fits is written whole and not marked. */
TEST(log_fits)
{
	log_setup(LOG_INFO, true);
	cut_unit = "x";
	cut_count = 100;
	cut_prefix = NULL;
	char *out = capture(emit_long);
	log_setup(LOG_INFO, false);
	CHECK(out != NULL && strstr(out, "truncated") == NULL);
	CHECK(out != NULL && strstr(out, "\"after\":12345}\n") != NULL);
	free(out);
}
