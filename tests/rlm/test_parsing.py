from rlm.parsing import parse_reply, truncate


def test_runs_repl_and_python_blocks_in_order_and_skips_other_languages():
    reply = ("Plan.\n```repl\na = 1\n```\ntext\n```bash\nrm -rf /\n```\n```python\nb = a + 1\n```\n"
             "```\nplain\n```\n```py\nc = 3\n```")
    parsed = parse_reply(reply)
    assert parsed.blocks == ["a = 1", "b = a + 1", "c = 3"]
    assert parsed.unclosed is None and parsed.final is None


def test_backticks_inside_code_do_not_close_a_block():
    reply = '```repl\ns = "```"\nprint(s)\n```'
    assert parse_reply(reply).blocks == ['s = "```"\nprint(s)']


def test_unclosed_fence_is_reported_and_not_run():
    parsed = parse_reply("```repl\nx = 1\n```\n```repl\nfor i in range(10):\n    print(i")
    assert parsed.blocks == ["x = 1"]
    assert parsed.unclosed == "repl"


def test_final_text_multiline_and_quoted():
    assert parse_reply("Done.\nFINAL(Paris)").final.value == "Paris"
    assert parse_reply('FINAL("Paris, France")').final.value == "Paris, France"
    parsed = parse_reply("FINAL(line one\nline (two))")
    assert parsed.final.kind == "text" and parsed.final.value == "line one\nline (two)"


def test_final_var_in_reply():
    parsed = parse_reply("```repl\nres = 2\n```\nFINAL_VAR(res)")
    assert parsed.final.kind == "var" and parsed.final.value == "res"
    assert parse_reply("FINAL_VAR('res')").final.value == "res"
    bad = parse_reply("FINAL_VAR(1 + 2)")
    assert bad.final is None and bad.bad_final_var == "1 + 2"


def test_final_inside_code_is_not_a_text_final():
    parsed = parse_reply("```repl\nFINAL('x')\n```")
    assert parsed.final is None and parsed.blocks == ["FINAL('x')"]


def test_final_must_start_a_line():
    assert parse_reply("I will call FINAL(x) later").final is None


def test_empty_reply():
    parsed = parse_reply("")
    assert parsed.blocks == [] and parsed.final is None and parsed.unclosed is None


def test_truncate_keeps_head_and_tail():
    text = "A" * 1000 + "B" * 1000
    cut = truncate(text, 300)
    assert cut.startswith("A" * 200) and cut.endswith("B" * 100)
    assert "1700 characters omitted" in cut
    assert truncate("short", 300) == "short"
