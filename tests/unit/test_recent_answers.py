from services.recommend.cache import RecentAnswers


def test_answers_expire_after_their_ttl():
    now = [0.0]
    cache = RecentAnswers(ttl_s=30, clock=lambda: now[0])
    cache.put(("u", 10, (), (1, 2)), "answer")
    assert cache.get(("u", 10, (), (1, 2))) == "answer"
    now[0] = 30.5
    assert cache.get(("u", 10, (), (1, 2))) is None


def test_a_new_history_is_a_new_key():
    cache = RecentAnswers()
    cache.put(("u", 10, (), (1, 2)), "before the purchase")
    assert cache.get(("u", 10, (), (3, 1, 2))) is None
