// The Jinja-subset interpreter through ChatTemplate::parse (trim_blocks + lstrip_blocks, as
// transformers renders). Each expected string was produced by jinja2 3.1.6 rendering the same
// template and variables in transformers' environment (ImmutableSandboxedEnvironment,
// loopcontrols, tojson = json.dumps(ensure_ascii=False)); none comes from Tandem.
#include <atomic>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "tandem/error.hpp"
#include "tandem/text/chat_template.hpp"

namespace {

struct JinjaCase {
  const char* source;
  const char* variables;  // JSON object of template variables
  const char* expected;
};

std::string render(const std::string& source, const std::string& variables_json = "{}") {
  const auto messages = nlohmann::ordered_json::array();
  const auto variables = nlohmann::ordered_json::parse(variables_json);
  tandem::ChatRequest request;
  request.ordered_messages = &messages;
  request.ordered_extra = &variables;
  return tandem::ChatTemplate::parse(source)->render(request);
}

template <size_t N>
void check_cases(const JinjaCase (&cases)[N]) {
  for (const auto& c : cases) {
    INFO("template: " << c.source << "\nvariables: " << c.variables);
    CHECK(render(c.source, c.variables) == c.expected);
  }
}

// Runs `source` and returns the error message; fails the test when nothing is thrown.
std::string error_of(const std::string& source, const std::string& variables_json = "{}") {
  try {
    render(source, variables_json);
  } catch (const tandem::Error& e) {
    return e.what();
  }
  FAIL("no error for: " << source);
  return {};
}

}  // namespace

TEST_CASE("jinja: whitespace control, trim_blocks and lstrip_blocks, comments, raw render as jinja2 does",
          "[jinja]") {
  const JinjaCase cases[] = {
      {"{%- if true -%}\n  a  \n{%- endif -%}\n  b\n{{- ' c ' -}}\n  d", "{}", "ab c d"},
      {"<ul>\n    {% for i in [1, 2] %}\n    <li>{{ i }}</li>\n    {% endfor %}\n</ul>\n", "{}",
       "<ul>\n    <li>1</li>\n    <li>2</li>\n</ul>"},
      {"a {# comment #} b\n{# line comment #}\nc", "{}", "a  b\nc"},
      {"{% raw %}{{ not parsed }}{% endraw %} ok", "{}", "{{ not parsed }} ok"},
      {"  {% if true %}\n  yes\n  {% endif %}\n  {{ 'v' }}\n", "{}", "  yes\n  v"},
      {"a\r\nb\r\n{% if true %}\r\nc\r\n{% endif %}\r\n", "{}", "a\nb\nc\n"},
      {"  {%+ if true %}x{% endif %}\n  {%- if true +%}\ny{% endif %}", "{}", "  x\ny"},
      {"x  {% if true %}y{% endif %}\n   {{ 'z' }}  {% if true %}w{% endif %}", "{}", "x  y   z  w"},
      {"{%- for message in messages %}{{- message }}{%- endfor %}", "{}", ""},
  };
  check_cases(cases);
}

TEST_CASE(
    "jinja: for loops (loop variables, else, filters, unpacking, break/continue, nesting) render as jinja2 "
    "does",
    "[jinja]") {
  const JinjaCase cases[] = {
      {"{% for x in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length "
       "}}{{ loop.revindex }}|{% endfor %}",
       "{}", "10TrueFalse33|21FalseFalse32|32FalseTrue31|"},
      {"{% for x in [] %}a{% else %}empty{% endfor %}", "{}", "empty"},
      {"{% for k, v in d.items() %}{{k}}={{v}};{% endfor %}", "{\"d\": {\"b\": 1, \"a\": [1, 2]}}",
       "b=1;a=[1, 2];"},
      {"{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% endfor %}", "{\"xs\": [1, 2, 3]}", "2232"},
      {"{% for x in xs|reverse %}{{ x }}{% endfor %}", "{\"xs\": [1, 2, 3]}", "321"},
      {"{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif "
       "%}{{ x }}{% endfor %}",
       "{}", "13"},
      {"{% for a in [1,2] %}{% for b in [3,4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index "
       "}}|{% endfor %}",
       "{}", "113 214 1|123 224 2|"},
      {"{% for x in 'abc' %}{{ x }}.{% endfor %} {{ range(3)|list }} {{ range(1, 7, 2)|list }}", "{}",
       "a.b.c. [0, 1, 2] [1, 3, 5]"},
      {"{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a','b') }} {% endfor %}",
       "{\"xs\": [1, 2, 3]}", "-2-a 1-3-b 2--a "},
      {"{% for i in range(3) %}{{ i }}{% if not loop.last %}, {% endif %}{% endfor %}", "{}", "0, 1, 2"},
      {"{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% for a in [[1,2]] %}{{ a[0] }}{% endfor "
       "%}",
       "{}", "37 1"},
  };
  check_cases(cases);
}

TEST_CASE("jinja: set, namespace and scoping render as jinja2 does", "[jinja]") {
  const JinjaCase cases[] = {
      {"{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}",
       "{\"xs\": [1, 2, 3]}", "6"},
      {"{% set n = 0 %}{% for x in xs %}{% set n = n + x %}{% endfor %}{{ n }}", "{\"xs\": [1, 2, 3]}", "0"},
      {"{% set block %}inner {{ 1 + 1 }}{% endset %}[{{ block }}]", "{}", "[inner 2]"},
      {"{{ loop_var|default(3) }}{% set a, b = [1, 2] %}{{ a }}{{ b }}", "{}", "312"},
      {"{% set x = 5 %}{% macro f() %}{{ x }}{% endmacro %}{{ f() }}", "{}", "5"},
      {"{% set content = '' %}{% if true %}{% set content = 'x' %}{% endif %}{{ content }}", "{}", "x"},
      {"{% set ns = namespace(a=1, b='x') %}{{ ns.a }}{{ ns.b }}{{ ns.c }}|{% set alias = ns %}{% set "
       "alias.a = 5 %}{{ ns.a }}",
       "{}", "1x|5"},
      {"{% set greeting = 'hi' %}{% for i in [1] %}{% set greeting = 'inner' %}{{ greeting }}{% endfor %}{{ "
       "greeting }}",
       "{}", "innerhi"},
  };
  check_cases(cases);
}

TEST_CASE(
    "jinja: expressions (slicing, arithmetic, printing, comparisons, conditionals) render as jinja2 does",
    "[jinja]") {
  const JinjaCase cases[] = {
      {"{{ s[::-1] }}|{{ s[1:] }}|{{ s[:-1] }}|{{ s[1:4:2] }}|{{ xs[::-1] }}|{{ xs[-2:] }}",
       "{\"s\": \"héllo\", \"xs\": [1, 2, 3]}", "olléh|éllo|héll|él|[3, 2, 1]|[2, 3]"},
      {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 10 / "
       "5 }}",
       "{}", "3 -4 1 2 3.5 1024 2.5 2.0"},
      {"{{ none }} {{ true }} {{ false }} {{ undefined_var }}|{{ [1, 'a', none, true] }} {{ {'a': 1, 'b': "
       "'x'} }}",
       "{}", "None True False |[1, 'a', None, True] {'a': 1, 'b': 'x'}"},
      {"{{ 'a' ~ 1 ~ none }} {{ 'ab' * 3 }} {{ [1] + [2] }}", "{}", "a1None ababab [1, 2]"},
      {"{{ 1 if true else 2 }} {{ 1 if false else 2 }} {{ 'x' if false }}|{{ not true }} {{ 1 and 2 }} {{ 0 "
       "or 'b' }} {{ 1 < 2 < 3 }} {{ 'a' in 'cat' }} {{ 3 not in [1,2] }} {{ 'k' in {'k': 1} }}",
       "{}", "1 2 |False 2 b True True True True"},
      {"{{ 3.14 }} {{ 1e20 }} {{ 0.0001 }} {{ 1e-5 }} {{ 2.0 * 3 }} {{ 100000000000000000.0 }} {{ -0.5 }}",
       "{}", "3.14 1e+20 0.0001 1e-05 6.0 1e+17 -0.5"},
      {"{{ \"it's\" }} {{ ['it\\'s', 'a\"b', 'x\\ny'] }}", "{}", "it's [\"it's\", 'a\"b', 'x\\ny']"},
      {"{% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}", "{\"c\": 1}", "C"},
      {"{{ (1, 2) }} {{ [1,2][0] }} {{ 'abc'[1] }} {{ 'abc'[-1] }} {{ xs[10] }}|", "{\"xs\": [1]}",
       "(1, 2) 1 b c |"},
      {"{% if not (1 and 0) %}t{% endif %}{% if 1 == 1.0 %}e{% endif %}{% if true == 1 %}b{% endif %}", "{}",
       "teb"},
      {"{{ 'abc' if 'b' in 'abc' }}{{ [1,2,3][1:] }}{{ (xs|length) - 1 }}{{ xs|length - 1 }}",
       "{\"xs\": [1, 2, 3]}", "abc[2, 3]22"},
      {"{{ '%s' }} {{ 10 - 2 - 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 3 * -1 }}", "{}", "%s 5 64 4 -3"},
      {"{{ \"a\" \"b\" }} {{ '\\u00e9\\x41\\t|' }}", "{}", "ab éA\t|"},
      {"{{ 0.1 + 0.2 }} {{ 1/3 }} {{ 2**62 }} {{ 1.0e16 }} {{ 123456789.0 }} {{ 5 // 2.0 }}", "{}",
       "0.30000000000000004 0.3333333333333333 4611686018427387904 1e+16 123456789.0 2.0"},
      {"{{ {'a': {'b': 1}} }} {{ {'a': {'b': 1}}['a']['b'] }}", "{}", "{'a': {'b': 1}} 1"},
  };
  check_cases(cases);
}

TEST_CASE("jinja: tests (is defined, none, string, mapping, ...) render as jinja2 does", "[jinja]") {
  const JinjaCase cases[] = {
      {"{% if x is defined %}d{% endif %}{% if y is undefined %}u{% endif %}{% if z is none %}n{% endif %}{% "
       "if s is string %}s{% endif %}{% if d is mapping %}m{% endif %}{% if xs is iterable %}i{% endif %}{% "
       "if xs is sequence %}q{% endif %}{% if 3 is number %}N{% endif %}{% if t is true %}T{% endif %}{% if "
       "f is false %}F{% endif %}{% if f is not true %}!{% endif %}",
       "{\"x\": 1, \"z\": null, \"s\": \"a\", \"d\": {}, \"xs\": [], \"t\": true, \"f\": false}",
       "dunsmiqNTF!"},
      {"{{ x is divisibleby 3 }} {{ x is odd }} {{ x is even }} {{ x is integer }} {{ 1.0 is float }} {{ x "
       "is eq 6 }} {{ x is in [6] }}",
       "{\"x\": 6}", "True False True True True True True"},
      {"{{ 'x' ~ u ~ 'y' }} {{ u is defined }} {{ u|length }} {{ u|default('d') }} {% for a in u %}no{% "
       "endfor %}",
       "{}", "xy False 0 d "},
  };
  check_cases(cases);
}

TEST_CASE("jinja: filters render as jinja2 does", "[jinja]") {
  const JinjaCase cases[] = {
      {"{{ '  a b  '|trim }}|{{ xs|length }}|{{ 'héllo'|length }}|{{ 'Hello'|lower }}{{ 'Hello'|upper }}|{{ "
       "xs|first }}{{ xs|last }}|{{ xs|join(', ') }}|{{ u|default('dflt') }}|{{ ''|default('e', true) }}",
       "{\"xs\": [1, 2, 3]}", "a b|3|5|helloHELLO|13|1, 2, 3|dflt|e"},
      {"{{ d|items|list }}|{{ 'aXbX'|replace('X', '-') }}|{{ '42'|int + 1 }}|{{ 'abc'|capitalize }}|{{ "
       "'hello world'|title }}|{{ xs|map(attribute='n')|join }}|{{ xs|selectattr('n', 'equalto', 2)|list "
       "}}|{{ xs|rejectattr('n', 'equalto', 2)|map(attribute='n')|list }}",
       "{\"d\": {\"a\": 1}, \"xs\": [{\"n\": 1}, {\"n\": 2}]}",
       "[('a', 1)]|a-b-|43|Abc|Hello World|12|[{'n': 2}]|[1]"},
      {"{{ xs|sort|list }} {{ xs|unique|list }} {{ xs|sum }} {{ xs|min }} {{ xs|max }} {{ -3|abs }} {{ "
       "2.5|round }} {{ 'a'|string }}",
       "{\"xs\": [3, 1, 2, 3]}", "[1, 2, 3, 3] [3, 1, 2] 9 1 3 3 2.0 a"},
      {"{{ xs|map('upper')|join(',') }} {{ xs|join(',', attribute='0') }}", "{\"xs\": [\"ab\", \"cd\"]}",
       "AB,CD a,c"},
      {"{{ xs|string }} {{ xs|list|length }} {{ d|length }} {{ d|list }}",
       "{\"xs\": [1, 2], \"d\": {\"a\": 1}}", "[1, 2] 2 1 ['a']"},
      {"{% filter upper %}hello {{ 'x' }}{% endfilter %}", "{}", "HELLO X"},
      {"{{ [3,1,2]|sort(reverse=true) }} {{ xs|sort(attribute='n')|map(attribute='n')|list }} {{ "
       "{'b':1,'a':2}|dictsort }}",
       "{\"xs\": [{\"n\": 2}, {\"n\": 1}]}", "[3, 2, 1] [1, 2] [('a', 2), ('b', 1)]"},
      {"{{ xs|selectattr('ok')|list|length }} {{ xs|selectattr('v', 'defined')|list|length }} {{ [0, 1, '', "
       "'a']|select|list }} {{ [1,2,3]|reject('odd')|list }}",
       "{\"xs\": [{\"ok\": true, \"v\": 1}, {\"ok\": false}]}", "1 1 [1, 'a'] [2]"},
      {"{{ '1.5'|float }} {{ 'x'|int }} {{ '  7 '|int }} {{ 3.9|int }} {{ true|int }} {{ '3.7'|int }}", "{}",
       "1.5 0 7 3 1 3"},
      {"{{ '  x  '|trim('x ') }}|{{ 'abc'|reverse }}|{{ 'Ab'|first }}|{{ [1,2]|last }}|{{ "
       "'aaa'|replace('a','b',2) }}|{{ ''|first }}|",
       "{}", "|cba|A|2|bba||"},
  };
  check_cases(cases);
}

TEST_CASE("jinja: tojson render as jinja2 does", "[jinja]") {
  const JinjaCase cases[] = {
      {"{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ 'é\"\\n'|tojson }}|{{ 1.0|tojson }}|{{ "
       "x|tojson(sort_keys=true) }}",
       "{\"x\": {\"b\": [1, 2.5, null, true], \"a\": \"ü\"}}",
       "{\"b\": [1, 2.5, null, true], \"a\": \"ü\"}|{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  "
       "],\n  \"a\": \"ü\"\n}|\"é\\\"\\n\"|1.0|{\"a\": \"ü\", \"b\": [1, 2.5, null, true]}"},
      {"{{ x|tojson(indent=4) }}", "{\"x\": [{\"a\": [], \"b\": {}}, \"日本\", 1.5e+300]}",
       "[\n    {\n        \"a\": [],\n        \"b\": {}\n    },\n    \"日本\",\n    1.5e+300\n]"},
      {"{{ 'a\"b'|tojson }} {{ '\\u2028'|tojson }} {{ '\\u007f'|tojson }} {{ 'é'|tojson(ensure_ascii=true) "
       "}}",
       "{}", "\"a\\\"b\" \" \" \"\" \"\\u00e9\""},
  };
  check_cases(cases);
}

TEST_CASE("jinja: str and dict methods render as jinja2 does", "[jinja]") {
  const JinjaCase cases[] = {
      {"{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', "
       "1) }} {{ 'xxhixx'.strip('x') }} {{ '  hi '.lstrip() }}|{{ '  hi '.rstrip() }}|",
       "{}", "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a b', 'c'] hi hi |  hi|"},
      {"{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('lo', 'x')) }} {{ 'hello'.find('l') }} {{ "
       "'hello'.count('l') }} {{ 'Hi'.lower() }}{{ 'Hi'.upper() }} {{ 'a-b'.replace('-', '+') }} {{ '{} and "
       "{}'.format(1, 'x') }}",
       "{}", "True True 2 2 hiHI a+b 1 and x"},
      {"{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 5) }} {{ d.keys()|list }} {{ d.values()|list }} {{ "
       "d['a'] }} {{ d.a }} {{ d.missing }}|",
       "{\"d\": {\"a\": 1, \"b\": 2}}", "1 None 5 ['a', 'b'] [1, 2] 1 1 |"},
      {"{% for m in messages %}{% endfor %}{{ 'é'|upper }} {{ 'ÀB'|lower }}", "{}", "É àb"},
      {"{{ message.content.split('</think>')[-1].lstrip('\\n') }}",
       "{\"message\": {\"content\": \"<think>\\nhmm\\n</think>\\n\\nanswer\"}}", "answer"},
      {"{{ 'one two'.title() }} {{ 'x'.join(['a','b']) }} {{ 'a\\nb'.splitlines() }} {{ 'abc'.rfind('c') }} "
       "{{ 'ab'.isalpha() }}",
       "{}", "One Two axb ['a', 'b'] 2 True"},
  };
  check_cases(cases);
}

TEST_CASE("jinja: macros and context variables render as jinja2 does", "[jinja]") {
  const JinjaCase cases[] = {
      {"{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ "
       "greet('Al', punct='?') }}",
       "{}", "Hi Bob! Hi Al?"},
      {"{{ messages|length }} {{ tools is none }} {{ add_generation_prompt }}", "{}", "0 True False"},
  };
  check_cases(cases);
}

TEST_CASE("jinja: unknown constructs are errors naming the construct and line", "[jinja][errors]") {
  using Catch::Matchers::Contains;
  // a filter or test that is never reached still fails: no silently wrong text later
  CHECK_THAT(error_of("line one\n{% if false %}{{ x | frobnicate }}{% endif %}"),
             Contains("line 2") && Contains("unknown filter 'frobnicate'"));
  CHECK_THAT(error_of("{{ x is frobnicated }}"),
             Contains("line 1") && Contains("unknown test 'frobnicated'"));
  CHECK_THAT(error_of("a\nb\n{% frobnicate %}"),
             Contains("line 3") && Contains("unknown or unsupported tag 'frobnicate'"));
  CHECK_THAT(error_of("{% for m in messages %}\n{% if true %}\nx"),
             Contains("line 2") && Contains("unclosed block 'if'") && Contains("'endif'"));
  CHECK_THAT(error_of("{% for m in messages %}\n{% endif %}"),
             Contains("line 2") && Contains("'endif'") && Contains("'for' opened on line 1"));
  CHECK_THAT(error_of("{{ 'abc'.frobnicate() }}"), Contains("line 1") && Contains("frobnicate"));
  CHECK_THAT(error_of("{{ 'unterminated }}"), Contains("unterminated string"));
  CHECK_THAT(error_of("{{ 1 + }}"), Contains("line 1") && Contains("'}}'"));
  CHECK_THAT(error_of("ok {# never closed"), Contains("unclosed comment"));
  CHECK_THAT(error_of("{% for x in xs recursive %}{% endfor %}"), Contains("recursive"));
}

TEST_CASE("jinja: runtime errors follow jinja2 (strict uses of undefined, type errors)", "[jinja][errors]") {
  using Catch::Matchers::Contains;
  CHECK_THAT(error_of("\n{{ missing.attribute }}"), Contains("line 2") && Contains("'missing' is undefined"));
  CHECK_THAT(error_of("{{ missing + 1 }}"), Contains("'missing' is undefined"));
  CHECK_THAT(error_of("{{ 1 + 'a' }}"), Contains("unsupported operand"));
  CHECK_THAT(error_of("{{ raise_exception('Only user and assistant roles are supported') }}"),
             Contains("Only user and assistant roles are supported"));
  CHECK_THAT(error_of("{% set x = 1 %}{% set x.attr = 2 %}"), Contains("namespace"));
  CHECK_THAT(error_of("{% for a, b in [[1, 2, 3]] %}{% endfor %}"), Contains("unpack"));
  // attributes of a defined value that lack the key are undefined, not errors (jinja2 semantics)
  CHECK(render("[{{ d.missing }}{{ d.missing is defined }}]", R"({"d": {}})") == "[False]");
}

TEST_CASE("jinja: hostile templates fail cleanly instead of exhausting resources", "[jinja][errors]") {
  using Catch::Matchers::Contains;
  CHECK_THAT(error_of("{{ range(100000000)|length }}"), Contains("range"));
  CHECK_THAT(error_of("{{ 'x' * 1000000000000 }}"), Contains("too large"));
  CHECK_THAT(error_of("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"), Contains("recursion"));
  const std::string deep = std::string(5000, '(') + "1" + std::string(5000, ')');
  CHECK_THAT(error_of("{{ " + deep + " }}"), Contains("nesting"));
  CHECK_THAT(error_of("{{ " + std::string(5000, '(') + " }}"), Contains("unclosed tag"));
  CHECK_THAT(error_of("{{ 9223372036854775807 + 1 }}"), Contains("overflow"));
}

TEST_CASE("jinja: deeply nested JSON input is refused with an error, not a stack overflow", "[jinja][errors]") {
  using Catch::Matchers::Contains;
  const auto template_ = tandem::ChatTemplate::parse("{{ messages|length }}{{ tools|length }}");
  for (size_t depth : {size_t{300}, size_t{20000}, size_t{100000}}) {
    INFO("depth " << depth);
    // Built by parsing text only: nlohmann's parser and destructor are iterative, but its copy
    // constructor and dump recurse, so a deep document must never be copied or dumped.
    const std::string arrays = std::string(depth, '[') + std::string(depth, ']');
    std::string objects;
    for (size_t k = 0; k < depth; ++k) objects += "{\"a\":";
    objects += "1" + std::string(depth, '}');
    const auto deep = nlohmann::ordered_json::parse(arrays);
    const auto extra = nlohmann::ordered_json::parse("{\"kw\": " + arrays + "}");
    const auto wrapped = nlohmann::json::parse("[" + objects + "]");
    const auto shallow = nlohmann::ordered_json::array();
    const auto no_extra = nlohmann::ordered_json::object();
    for (int where = 0; where < 4; ++where) {
      tandem::ChatRequest request;
      request.ordered_messages = where == 0 ? &deep : &shallow;
      if (where == 1) request.ordered_tools = &deep;
      request.ordered_extra = where == 2 ? &extra : &no_extra;
      if (where == 3) {
        request.ordered_messages = nullptr;
        request.messages = &wrapped;
      }
      try {
        (void)template_->render(request);
        FAIL("no error for nesting at depth " << depth << ", place " << where);
      } catch (const tandem::Error& e) {
        CHECK(e.kind() == tandem::ErrorKind::invalid_argument);
        CHECK_THAT(e.what(), Contains("deeper than 256"));
      }
    }
  }
  // 256 levels are still accepted
  const auto ok = nlohmann::ordered_json::parse("[" + std::string(255, '[') + std::string(255, ']') + "]");
  const auto no_tools = nlohmann::ordered_json::array();
  tandem::ChatRequest request;
  request.ordered_messages = &ok;
  request.ordered_tools = &no_tools;
  CHECK(template_->render(request) == "10");
}

TEST_CASE("jinja: a template that would run forever stops at the step budget or on cancel",
          "[jinja][errors]") {
  using Catch::Matchers::Contains;
  const auto messages = nlohmann::ordered_json::array();
  const auto nested = tandem::ChatTemplate::parse(
      "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
  const auto silent = tandem::ChatTemplate::parse(
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
  for (const auto* parsed : {nested.get(), silent.get()}) {
    tandem::ChatRequest request;
    request.ordered_messages = &messages;
    request.max_steps = 1'000'000;
    try {
      (void)parsed->render(request);
      FAIL("no error");
    } catch (const tandem::Error& e) {
      CHECK(e.kind() == tandem::ErrorKind::out_of_range);
      CHECK_THAT(e.what(), Contains("budget of 1000000 evaluation steps"));
    }
  }
#if !defined(__SANITIZE_ADDRESS__)  // 50M steps take seconds here, minutes under the sanitizers
  {  // the default budget ends it too (in seconds, not hours)
    tandem::ChatRequest request;
    request.ordered_messages = &messages;
    CHECK_THROWS_WITH(silent->render(request), Contains("budget of 50000000 evaluation steps"));
  }
#endif
  {  // building a large value each pass is work too: one step per list item or 64 bytes of string
    // (found by fuzz_template: ran for 20 minutes inside the default budget of steps)
    for (const char* busy :
         {"{% for i in range(250470) %}{% for j in range(1000000) ,%}x{% endfor %}{% endfor %}",
          "{% for i in range(250470) %}{% set s = 'x' * 1000000 %}{% endfor %}",
          "{% for i in range(250470) %}{% set s = range(1000)|list|join(',') %}{% endfor %}"}) {
      INFO(busy);
      tandem::ChatRequest request;
      request.ordered_messages = &messages;
      request.max_steps = 1'000'000;
      CHECK_THROWS_WITH(tandem::ChatTemplate::parse(busy)->render(request), Contains("budget of 1000000 evaluation steps"));
    }
  }
  {  // a raised cancel flag stops rendering
    std::atomic<bool> cancel{true};
    tandem::ChatRequest request;
    request.ordered_messages = &messages;
    request.cancel = &cancel;
    try {
      (void)nested->render(request);
      FAIL("no error");
    } catch (const tandem::Error& e) {
      CHECK(e.kind() == tandem::ErrorKind::cancelled);
    }
  }
  {  // ordinary templates are unaffected by the budget
    tandem::ChatRequest request;
    request.ordered_messages = &messages;
    request.max_steps = 1000;
    CHECK(tandem::ChatTemplate::parse("{% for i in range(3) %}{{ i }}{% endfor %}")->render(request) == "012");
  }
}

TEST_CASE("jinja: deeply nested blocks are refused by the parser", "[jinja][errors]") {
  using Catch::Matchers::Contains;
  std::string blocks;
  for (int k = 0; k < 5000; ++k) blocks += "{% if true %}";
  for (int k = 0; k < 5000; ++k) blocks += "{% endif %}";
  CHECK_THAT(error_of(blocks), Contains("nesting"));
  std::string lists = "{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}";
  CHECK_THAT(error_of(lists), Contains("nesting"));
}
