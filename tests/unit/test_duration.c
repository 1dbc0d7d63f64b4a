#include "test.h"

#include "config.h"

/* The parsed value, or -1 when the text is refused. */
static long long duration(const char *text)
{
	uint64_t ms = 12345;

	if (cfg_parse_duration(text, &ms) != 0)
		return -1;
	return (long long)ms;
}

TEST(duration_valid)
{
	uint64_t ms = 1;

	CHECK_INT(duration("0"), 0);
	CHECK_INT(duration("0ms"), 0);
	CHECK_INT(duration("0s"), 0);
	CHECK_INT(duration("1ms"), 1);
	CHECK_INT(duration("250ms"), 250);
	CHECK_INT(duration("10s"), 10000);
	CHECK_INT(duration("5m"), 300000);
	CHECK_INT(duration("1h"), 3600000);
	CHECK_INT(duration("36h"), 36LL * 3600000);
	CHECK_INT(duration("14d"), 14LL * 24 * 3600000);
	CHECK_INT(duration("0010s"), 10000);

	CHECK_INT(cfg_parse_duration("18446744073709551615ms", &ms), 0);
	CHECK(ms == UINT64_MAX);
	CHECK_INT(cfg_parse_duration("5124095576030h", &ms), 0);
	CHECK(ms == 5124095576030ULL * 3600000);
}

TEST(duration_invalid)
{
	/* missing unit */
	CHECK_INT(duration("5"), -1);
	CHECK_INT(duration("00"), -1);
	CHECK_INT(duration("1000"), -1);
	/* unknown unit */
	CHECK_INT(duration("5x"), -1);
	CHECK_INT(duration("5sec"), -1);
	CHECK_INT(duration("5S"), -1);
	CHECK_INT(duration("5w"), -1);
	CHECK_INT(duration("5D"), -1);
	CHECK_INT(duration("5ms5"), -1);
	CHECK_INT(duration("1.5s"), -1);
	/* no number */
	CHECK_INT(duration(""), -1);
	CHECK_INT(duration("s"), -1);
	CHECK_INT(duration("ms"), -1);
	CHECK_INT(duration("+5s"), -1);
	/* negative */
	CHECK_INT(duration("-5s"), -1);
	CHECK_INT(duration("-0"), -1);
	/* spaces */
	CHECK_INT(duration("5 s"), -1);
	CHECK_INT(duration(" 5s"), -1);
	CHECK_INT(duration("5s "), -1);
	CHECK_INT(duration("1 0s"), -1);
	CHECK_INT(duration("5\ts"), -1);
	/* overflow: in the number, and once multiplied by the unit */
	CHECK_INT(duration("18446744073709551616ms"), -1);
	CHECK_INT(duration("99999999999999999999999s"), -1);
	CHECK_INT(duration("18446744073709552s"), -1);
	CHECK_INT(duration("5124095576031h"), -1);
}
