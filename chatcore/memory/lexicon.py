"""The small word lists that learning from what users say relies on: language names in several
languages, occupations, and the everyday words that are never a name.

A leaf module of constants (standard library only). Every key is folded: lower case, accents off.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Language names as users write them (English, French, German, Spanish), folded, to the English
# name stored as the preference value.
LANGUAGES: dict[str, str] = {
    **{
        name: name.capitalize()
        for name in _words(
            "english arabic bengali bulgarian catalan chinese croatian czech danish dutch estonian "
            "finnish french german greek hebrew hindi hungarian icelandic indonesian irish italian "
            "japanese korean latvian lithuanian malay mandarin cantonese norwegian persian polish "
            "portuguese romanian russian serbian slovak slovenian spanish swahili swedish tagalog "
            "thai turkish ukrainian urdu vietnamese welsh esperanto latin "
        )
    },
    # French
    "anglais": "English",
    "francais": "French",
    "allemand": "German",
    "espagnol": "Spanish",
    "italien": "Italian",
    "portugais": "Portuguese",
    "neerlandais": "Dutch",
    "hollandais": "Dutch",
    "russe": "Russian",
    "chinois": "Chinese",
    "japonais": "Japanese",
    "coreen": "Korean",
    "arabe": "Arabic",
    "polonais": "Polish",
    "suedois": "Swedish",
    "grec": "Greek",
    "turc": "Turkish",
    "ukrainien": "Ukrainian",
    "breton": "Breton",
    # German
    "englisch": "English",
    "franzosisch": "French",
    "deutsch": "German",
    "spanisch": "Spanish",
    "italienisch": "Italian",
    "portugiesisch": "Portuguese",
    "niederlandisch": "Dutch",
    "hollandisch": "Dutch",
    "russisch": "Russian",
    "chinesisch": "Chinese",
    "japanisch": "Japanese",
    "koreanisch": "Korean",
    "arabisch": "Arabic",
    "polnisch": "Polish",
    "schwedisch": "Swedish",
    "griechisch": "Greek",
    "turkisch": "Turkish",
    "ukrainisch": "Ukrainian",
    # Spanish
    "ingles": "English",
    "frances": "French",
    "aleman": "German",
    "espanol": "Spanish",
    "castellano": "Spanish",
    "italiano": "Italian",
    "portugues": "Portuguese",
    "holandes": "Dutch",
    "ruso": "Russian",
    "chino": "Chinese",
    "japones": "Japanese",
    "coreano": "Korean",
    "polaco": "Polish",
    "sueco": "Swedish",
    "griego": "Greek",
    "turco": "Turkish",
}

# Words for nationalities that, capitalised after "I'm", are not a name.
NATIONALITIES = _words(
    "american british canadian australian irish scottish welsh indian pakistani chinese "
    "japanese korean vietnamese thai filipino indonesian french german spanish italian "
    "portuguese brazilian mexican argentinian argentine chilean colombian peruvian dutch "
    "belgian swiss austrian swedish norwegian danish finnish polish czech russian ukrainian "
    "greek turkish israeli egyptian moroccan nigerian kenyan african european asian english "
    "catholic christian muslim jewish hindu buddhist atheist "
)

# Occupations in English (folded): the head noun of "I'm a ... <noun>".
ROLE_NOUNS = _words(
    "developer programmer engineer coder hacker scientist analyst researcher student "
    "teacher professor lecturer tutor instructor doctor physician nurse surgeon dentist "
    "pharmacist paramedic vet veterinarian lawyer attorney solicitor barrister judge "
    "accountant designer architect artist illustrator animator writer author novelist poet "
    "journalist editor translator interpreter manager consultant entrepreneur founder ceo "
    "cto sysadmin administrator devops musician composer singer photographer filmmaker chef "
    "cook baker farmer gardener mechanic electrician plumber carpenter builder pilot "
    "firefighter officer soldier therapist psychologist psychiatrist counselor counsellor "
    "mathematician physicist chemist biologist economist statistician librarian marketer "
    "salesperson recruiter tester intern freelancer hobbyist beginner retiree technician "
    "mathematics homemaker housewife househusband secretary assistant clerk cashier waiter "
    "waitress driver electrician plumber professional specialist expert "
)

# A role's modifiers must not judge ("a terrible cook" is not an occupation).
ROLE_BAD_MODIFIERS = _words(
    "terrible bad good great awful horrible lousy decent big huge real true total complete "
    "bit little lot fan kind sort type better worse best worst failed "
)

# Occupations in French, German and Spanish (folded, masculine and feminine) to English.
ROLE_TRANSLATIONS: dict[str, str] = {
    # French
    "developpeur": "developer",
    "developpeuse": "developer",
    "programmeur": "programmer",
    "programmeuse": "programmer",
    "ingenieur": "engineer",
    "ingenieure": "engineer",
    "etudiant": "student",
    "etudiante": "student",
    "professeur": "teacher",
    "professeure": "teacher",
    "enseignant": "teacher",
    "enseignante": "teacher",
    "medecin": "doctor",
    "infirmier": "nurse",
    "infirmiere": "nurse",
    "avocat": "lawyer",
    "avocate": "lawyer",
    "comptable": "accountant",
    "chercheur": "researcher",
    "chercheuse": "researcher",
    "graphiste": "designer",
    "journaliste": "journalist",
    "traducteur": "translator",
    "traductrice": "translator",
    # German
    "entwickler": "developer",
    "entwicklerin": "developer",
    "softwareentwickler": "software developer",
    "softwareentwicklerin": "software developer",
    "programmierer": "programmer",
    "programmiererin": "programmer",
    "ingenieurin": "engineer",
    "student": "student",
    "studentin": "student",
    "lehrer": "teacher",
    "lehrerin": "teacher",
    "arzt": "doctor",
    "arztin": "doctor",
    "krankenpfleger": "nurse",
    "krankenschwester": "nurse",
    "pflegerin": "nurse",
    "anwalt": "lawyer",
    "anwaltin": "lawyer",
    "rechtsanwalt": "lawyer",
    "rechtsanwaltin": "lawyer",
    "forscher": "researcher",
    "forscherin": "researcher",
    "ubersetzer": "translator",
    "ubersetzerin": "translator",
    # Spanish
    "desarrollador": "developer",
    "desarrolladora": "developer",
    "programador": "programmer",
    "programadora": "programmer",
    "ingeniero": "engineer",
    "ingeniera": "engineer",
    "estudiante": "student",
    "profesor": "teacher",
    "profesora": "teacher",
    "maestro": "teacher",
    "maestra": "teacher",
    "medico": "doctor",
    "medica": "doctor",
    "enfermero": "nurse",
    "enfermera": "nurse",
    "abogado": "lawyer",
    "abogada": "lawyer",
    "investigador": "researcher",
    "investigadora": "researcher",
    "traductor": "translator",
    "traductora": "translator",
}

# Technologies written in a role ("a python developer") with their usual spelling.
TECH_SPELLING: dict[str, str] = {
    "python": "Python",
    "java": "Java",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "rust": "Rust",
    "go": "Go",
    "golang": "Go",
    "ruby": "Ruby",
    "php": "PHP",
    "c++": "C++",
    "c#": "C#",
    "kotlin": "Kotlin",
    "swift": "Swift",
    "scala": "Scala",
    "haskell": "Haskell",
    "react": "React",
    "django": "Django",
    "rails": "Rails",
    "android": "Android",
    "ios": "iOS",
    "linux": "Linux",
    "sql": "SQL",
    "web": "web",
    "frontend": "frontend",
    "backend": "backend",
    "front-end": "front-end",
    "back-end": "back-end",
    "fullstack": "full-stack",
    "full-stack": "full-stack",
}

# Words that are never taken for a name (folded): what follows "call me" in everyday speech
# ("call me later", "call me crazy"), adjectives after "I'm", and function words.
NOT_NAMES = _words(
    "a an the this that these those it its me you him her them us my your his our their "
    "back later tomorrow tonight today now soon sometime anytime whenever when if after "
    "before once asap again maybe perhaps please pls plz thanks thank ok okay crazy old- "
    "fashioned weird stupid silly names anything something nothing whatever sir madam maam "
    "boss dude bro mate buddy at on in by for from to with and or but so not no yes here "
    "there home done ready fine good great well bad sorry sure glad happy sad tired hungry "
    "busy new back afraid going trying just also still very really quite learning looking "
    "working thinking wondering curious confused lost stuck interested important irrelevant "
    "private secret unknown complicated long short hard easy spelled spelt pronounced "
    "written on-line online offline retired single married right wrong late early up down "
    "out over off about around like as because since though although however btw lol haha "
    "hey hi hello bitte mal doch auch nicht le la les un une de du des el los las por favor "
    "pas plus ne que qui ich du er sie es wir is am are was were be been being do does did "
    "have has had will would can could should may might must shall let lets us ever never "
    "always sometimes "
)

# Everyday nouns after "my" that make a passing remark, not a fact worth keeping ("my question
# is ...", "my code is broken").
MY_TRANSIENT = _words(
    "question questions point problem problems guess answer bad issue concern idea opinion "
    "thought thoughts code output error errors computer laptop pc internet connection wifi "
    "phone screen mind head day week morning turn fault mistake pleasure apologies "
    "understanding impression feeling hope request prompt message text essay homework "
    "function script program test tests build query list file files data account "
    "password battery bill order package delivery flight train bus meeting appointment plan "
    "plans train "
)

# People and animals the user may tell facts about ("my wife works at ...").
RELATIVES = _words(
    "wife husband partner spouse son daughter kid kids child children baby brother sister "
    "sibling siblings mother mom mum mama father dad papa parents grandmother grandfather "
    "grandma grandpa grandparents cousin uncle aunt niece nephew friend boyfriend "
    "girlfriend fiance fiancee boss colleague coworker roommate flatmate neighbour neighbor "
    "dog cat puppy kitten horse parrot rabbit hamster family twins "
)

# What "I have ..." may be followed by to be a lasting fact (the noun after a count or article).
HAVE_NOUNS = RELATIVES | _words(
    "car bike bicycle motorcycle house flat apartment garden boat farm shop bakery "
    "restaurant business company degree phd masters bachelor allergy dogs cats kids sons "
    "daughters brothers sisters children pets pet fish birds bird horses chickens tattoo "
    "tattoos piano guitar mac macbook iphone "
)

# Lasting conditions after "I have" ("I have diabetes").
HAVE_CONDITIONS = _words(
    "diabetes asthma adhd autism dyslexia epilepsy celiac coeliac arthritis migraines "
    "allergies tinnitus insomnia "
)

# Lasting states after "I'm" ("I'm vegetarian").
STATES = _words(
    "vegetarian vegan pescatarian diabetic left-handed right-handed colorblind colourblind "
    "color-blind colour-blind deaf blind married divorced widowed single pregnant retired "
    "celiac coeliac lactose-intolerant gluten-intolerant autistic dyslexic "
)

# The nouns of non-English facts ("mon chien s'appelle Rex") in English.
FACT_NOUNS: dict[str, str] = {
    # French
    "chien": "dog",
    "chat": "cat",
    "chienne": "dog",
    "chatte": "cat",
    "femme": "wife",
    "mari": "husband",
    "fils": "son",
    "fille": "daughter",
    "frere": "brother",
    "soeur": "sister",
    "sœur": "sister",
    "mere": "mother",
    "pere": "father",
    "copain": "boyfriend",
    "copine": "girlfriend",
    # German
    "hund": "dog",
    "katze": "cat",
    "kater": "cat",
    "frau": "wife",
    "mann": "husband",
    "sohn": "son",
    "tochter": "daughter",
    "bruder": "brother",
    "schwester": "sister",
    "mutter": "mother",
    "vater": "father",
    "freund": "friend",
    "freundin": "girlfriend",
    # Spanish
    "perro": "dog",
    "perra": "dog",
    "gato": "cat",
    "gata": "cat",
    "esposa": "wife",
    "esposo": "husband",
    "marido": "husband",
    "hijo": "son",
    "hija": "daughter",
    "hermano": "brother",
    "hermana": "sister",
    "madre": "mother",
    "padre": "father",
    "novio": "boyfriend",
    "novia": "girlfriend",
}
